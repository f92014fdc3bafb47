// A power sampler: a C++ thread polling NVML's power reading (and its energy counter) at a fixed rate,
// never touching the Python GIL. libnvidia-ml is opened with dlopen at run time, so this builds and
// imports on machines with no GPU and no NVML headers; the few NVML entry points are declared here.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pyscale {
namespace power {

struct Sample {
  int64_t t_ns;              // CLOCK_MONOTONIC, the clock of Python's time.monotonic()
  int64_t power_mw;          // -1 when the read failed (see power_status)
  int64_t energy_mj;         // -1 when the read failed (see energy_status)
  int power_status;          // nvmlReturn_t of the power read (0 = success)
  int energy_status;         // nvmlReturn_t of the energy read
};

class NvmlSampler {
 public:
  // `uuid` selects the GPU when non-empty (CUDA_VISIBLE_DEVICES-safe), else NVML index `index`.
  NvmlSampler(const std::string& library, const std::string& uuid, int index, double interval_s);
  ~NvmlSampler();
  NvmlSampler(const NvmlSampler&) = delete;
  NvmlSampler& operator=(const NvmlSampler&) = delete;

  void start();                 // clears the trace and starts the thread
  void stop();                  // joins the thread
  bool running() const { return running_.load(); }
  std::vector<Sample> samples() const;
  std::string error() const;    // the error that stopped sampling, or ""
  double interval_s() const { return interval_s_; }
  // "instant" (NVML_FI_DEV_POWER_INSTANT through nvmlDeviceGetFieldValues) or "average"
  // (nvmlDeviceGetPowerUsage, a ~1 s moving average on Ampere and newer); decided at construction.
  std::string power_source() const { return use_field_ ? "instant" : "average"; }
  std::string library() const { return library_; }

 private:
  void loop();
  void fail(const std::string& what, int status);

  using Ret = int;
  using Device = void*;
  void* lib_ = nullptr;
  Ret (*init_)() = nullptr;
  Ret (*shutdown_)() = nullptr;
  Ret (*by_index_)(unsigned int, Device*) = nullptr;
  Ret (*by_uuid_)(const char*, Device*) = nullptr;
  Ret (*power_)(Device, unsigned int*) = nullptr;
  Ret (*energy_)(Device, unsigned long long*) = nullptr;
  Ret (*field_values_)(Device, int, void*) = nullptr;
  bool use_field_ = false;
  int read_power(unsigned int* mw);
  const char* (*error_string_)(Ret) = nullptr;
  Device device_ = nullptr;
  bool initialised_ = false;

  std::string library_;
  double interval_s_;
  std::thread thread_;
  std::atomic<bool> running_{false};
  bool stop_requested_ = false;
  mutable std::mutex mutex_;  // guards samples_, error_, stop_requested_
  std::condition_variable wake_;
  std::vector<Sample> samples_;
  std::string error_;
};

}  // namespace power
}  // namespace pyscale

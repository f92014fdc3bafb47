#include "power/nvml_sampler.h"

#include <dlfcn.h>
#include <time.h>

#include <chrono>
#include <stdexcept>

namespace pyscale {
namespace power {

namespace {

constexpr int kGpuIsLost = 15;  // NVML_ERROR_GPU_IS_LOST
constexpr unsigned int kFieldPowerInstant = 186;  // NVML_FI_DEV_POWER_INSTANT (mW)

// nvmlFieldValue_t as nvml.h lays it out (the value is a union of 8-byte-or-smaller scalars).
struct FieldValue {
  unsigned int field_id;
  unsigned int scope_id;
  long long timestamp;
  long long latency_usec;
  int value_type;
  int nvml_return;
  union {
    double d;
    unsigned int ui;
    unsigned long ul;
    unsigned long long ull;
    long long sll;
  } value;
};

int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

template <typename F>
F symbol(void* lib, const char* name, bool required) {
  void* p = dlsym(lib, name);
  if (!p && required) throw std::runtime_error(std::string("NVML library has no symbol ") + name);
  return reinterpret_cast<F>(p);
}

}  // namespace

NvmlSampler::NvmlSampler(const std::string& library, const std::string& uuid, int index, double interval_s)
    : library_(library), interval_s_(interval_s) {
  if (!(interval_s > 0.0)) throw std::invalid_argument("interval_s must be positive");
  lib_ = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib_) {
    const char* why = dlerror();
    throw std::runtime_error("cannot load " + library + ": " + (why ? why : "unknown dlopen error") +
                             " (no NVIDIA driver on this machine?)");
  }
  try {
    // The _v2 entry points are what nvml.h maps the plain names to since CUDA 4/5; fall back for old fakes.
    init_ = symbol<Ret (*)()>(lib_, "nvmlInit_v2", false);
    if (!init_) init_ = symbol<Ret (*)()>(lib_, "nvmlInit", true);
    shutdown_ = symbol<Ret (*)()>(lib_, "nvmlShutdown", true);
    by_index_ = symbol<Ret (*)(unsigned int, Device*)>(lib_, "nvmlDeviceGetHandleByIndex_v2", false);
    if (!by_index_) by_index_ = symbol<Ret (*)(unsigned int, Device*)>(lib_, "nvmlDeviceGetHandleByIndex", true);
    by_uuid_ = symbol<Ret (*)(const char*, Device*)>(lib_, "nvmlDeviceGetHandleByUUID", true);
    power_ = symbol<Ret (*)(Device, unsigned int*)>(lib_, "nvmlDeviceGetPowerUsage", true);
    energy_ = symbol<Ret (*)(Device, unsigned long long*)>(lib_, "nvmlDeviceGetTotalEnergyConsumption", false);
    error_string_ = symbol<const char* (*)(Ret)>(lib_, "nvmlErrorString", false);
    field_values_ = symbol<Ret (*)(Device, int, void*)>(lib_, "nvmlDeviceGetFieldValues", false);

    auto describe = [this](Ret r) {
      return std::to_string(r) + (error_string_ ? std::string(" (") + error_string_(r) + ")" : std::string());
    };
    Ret r = init_();
    if (r != 0) throw std::runtime_error("nvmlInit failed: " + describe(r));
    initialised_ = true;
    r = uuid.empty() ? by_index_(static_cast<unsigned int>(index), &device_) : by_uuid_(uuid.c_str(), &device_);
    if (r != 0) {
      throw std::runtime_error("no NVML device " + (uuid.empty() ? "index " + std::to_string(index) : uuid) + ": " +
                               describe(r));
    }
    // Prefer the instantaneous power field where the driver has it (the plain reading is averaged).
    if (field_values_) {
      use_field_ = true;
      unsigned int mw = 0;
      if (read_power(&mw) != 0) use_field_ = false;
    }
  } catch (...) {
    if (initialised_) shutdown_();
    dlclose(lib_);
    lib_ = nullptr;
    throw;
  }
}

NvmlSampler::~NvmlSampler() {
  stop();
  if (initialised_) shutdown_();
  if (lib_) dlclose(lib_);
}

void NvmlSampler::start() {
  stop();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    samples_.clear();
    error_.clear();
    stop_requested_ = false;
  }
  running_.store(true);
  thread_ = std::thread(&NvmlSampler::loop, this);
}

void NvmlSampler::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_requested_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  running_.store(false);
}

std::vector<Sample> NvmlSampler::samples() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return samples_;
}

std::string NvmlSampler::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

void NvmlSampler::fail(const std::string& what, int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  error_ = what + " returned " + std::to_string(status) +
           (error_string_ ? std::string(" (") + error_string_(status) + ")" : std::string());
}

int NvmlSampler::read_power(unsigned int* mw) {
  if (use_field_) {
    FieldValue fv{};
    fv.field_id = kFieldPowerInstant;
    const Ret r = field_values_(device_, 1, &fv);
    if (r != 0) return r;
    if (fv.nvml_return != 0) return fv.nvml_return;
    *mw = fv.value.ui;
    return 0;
  }
  return power_(device_, mw);
}

void NvmlSampler::loop() {
  const auto period = std::chrono::nanoseconds(static_cast<int64_t>(interval_s_ * 1e9));
  // Absolute deadlines: the rate does not drift by the time each read takes.
  auto next = std::chrono::steady_clock::now();
  for (;;) {
    Sample s{};
    s.t_ns = monotonic_ns();
    unsigned int mw = 0;
    s.power_status = read_power(&mw);
    s.power_mw = s.power_status == 0 ? static_cast<int64_t>(mw) : -1;
    if (energy_) {
      unsigned long long mj = 0;
      s.energy_status = energy_(device_, &mj);
      s.energy_mj = s.energy_status == 0 ? static_cast<int64_t>(mj) : -1;
    } else {
      s.energy_status = 3;  // NVML_ERROR_NOT_SUPPORTED: the library has no energy counter
      s.energy_mj = -1;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      samples_.push_back(s);
    }
    if (s.power_status == kGpuIsLost || s.energy_status == kGpuIsLost) {
      fail("nvmlDeviceGetPowerUsage/nvmlDeviceGetTotalEnergyConsumption", kGpuIsLost);
      break;
    }
    next += period;
    std::unique_lock<std::mutex> lock(mutex_);
    if (wake_.wait_until(lock, next, [this] { return stop_requested_; })) break;
  }
  running_.store(false);
}

}  // namespace power
}  // namespace pyscale

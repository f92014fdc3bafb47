// pyscale._C: torch-free bindings. Python passes data pointers (tensor.data_ptr()), sizes and, for
// CUDA, the current stream handle; Python checks every argument before it gets here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "cuda_info.h"
#include "ops/int4/int4.h"
#include "ops/moe/moe.h"
#include "power/nvml_sampler.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

#ifdef PYSCALE_WITH_CUDA
void check_cuda(const std::string& error, const char* op) {
  if (!error.empty()) throw std::runtime_error(std::string(op) + ": CUDA error: " + error);
}
#endif

void bind_int4(py::module_& m) {
  m.def("int4_quantize_cpu",
        [](std::uintptr_t w, int64_t n, int64_t k, int g, bool symmetric, int scale_dtype, std::uintptr_t packed,
           std::uintptr_t scales, std::uintptr_t zeros) {
          py::gil_scoped_release release;
          pyscale::int4::quantize_cpu(ptr<const float>(w), n, k, g, symmetric, scale_dtype, ptr<uint8_t>(packed),
                                      ptr<float>(scales), ptr<uint8_t>(zeros));
        });
  m.def("int4_pack_cpu", [](std::uintptr_t codes, int64_t n, int64_t k, std::uintptr_t packed) {
    py::gil_scoped_release release;
    pyscale::int4::pack_cpu(ptr<const uint8_t>(codes), n, k, ptr<uint8_t>(packed));
  });
  m.def("int4_unpack_cpu", [](std::uintptr_t packed, int64_t n, int64_t k, std::uintptr_t codes) {
    py::gil_scoped_release release;
    pyscale::int4::unpack_cpu(ptr<const uint8_t>(packed), n, k, ptr<uint8_t>(codes));
  });
  m.def("int4_dequantize_cpu", [](std::uintptr_t packed, std::uintptr_t scales, std::uintptr_t zeros, int64_t n,
                                  int64_t k, int g, std::uintptr_t out) {
    py::gil_scoped_release release;
    pyscale::int4::dequantize_cpu(ptr<const uint8_t>(packed), ptr<const float>(scales), ptr<const uint8_t>(zeros), n, k, g,
                   ptr<float>(out));
  });
#ifdef PYSCALE_WITH_CUDA
  m.def("int4_quantize_cuda",
        [](std::uintptr_t w, int64_t n, int64_t k, int g, bool symmetric, int scale_dtype, std::uintptr_t packed,
           std::uintptr_t scales, std::uintptr_t zeros, std::uintptr_t stream) {
          check_cuda(pyscale::int4::quantize_cuda(ptr<const float>(w), n, k, g, symmetric, scale_dtype,
                                                  ptr<uint8_t>(packed), ptr<float>(scales), ptr<uint8_t>(zeros),
                                                  ptr<void>(stream)),
                     "int4_quantize");
        });
  m.def("int4_pack_cuda", [](std::uintptr_t codes, int64_t n, int64_t k, std::uintptr_t packed, std::uintptr_t stream) {
    check_cuda(pyscale::int4::pack_cuda(ptr<const uint8_t>(codes), n, k, ptr<uint8_t>(packed), ptr<void>(stream)),
               "int4_pack");
  });
  m.def("int4_unpack_cuda", [](std::uintptr_t packed, int64_t n, int64_t k, std::uintptr_t codes, std::uintptr_t stream) {
    check_cuda(pyscale::int4::unpack_cuda(ptr<const uint8_t>(packed), n, k, ptr<uint8_t>(codes), ptr<void>(stream)),
               "int4_unpack");
  });
  m.def("int4_dequantize_cuda", [](std::uintptr_t packed, std::uintptr_t scales, std::uintptr_t zeros, int64_t n,
                                   int64_t k, int g, std::uintptr_t out, std::uintptr_t stream) {
    check_cuda(pyscale::int4::dequantize_cuda(ptr<const uint8_t>(packed), ptr<const float>(scales),
                                              ptr<const uint8_t>(zeros), n, k, g, ptr<float>(out), ptr<void>(stream)),
               "int4_dequantize");
  });
#endif
}

// moe_align: int32 topk_ids (slots,) -> the padded per-expert layout of ops/moe/moe_kernels.cuh.
void bind_moe(py::module_& m) {
  m.def("moe_align_cuda_workspace", &pyscale::moe::align_cuda_workspace);
  m.def("moe_align_cpu", [](std::uintptr_t ids, int64_t slots, int64_t n_experts, int64_t block, int64_t capacity,
                            std::uintptr_t sorted_ids, std::uintptr_t expert_ids, std::uintptr_t n_pad,
                            std::uintptr_t slot_pos, std::uintptr_t offsets, std::uintptr_t counts,
                            std::uintptr_t dropped, std::uintptr_t invalid) {
    py::gil_scoped_release release;
    pyscale::moe::align_cpu(ptr<const int32_t>(ids), slots, n_experts, block, capacity, ptr<int32_t>(sorted_ids),
                            ptr<int32_t>(expert_ids), ptr<int32_t>(n_pad), ptr<int32_t>(slot_pos),
                            ptr<int32_t>(offsets), ptr<int32_t>(counts), ptr<int32_t>(dropped),
                            ptr<int32_t>(invalid));
  });
#ifdef PYSCALE_WITH_CUDA
  m.def("moe_align_cuda", [](std::uintptr_t ids, int64_t slots, int64_t n_experts, int64_t block, int64_t capacity,
                             std::uintptr_t sorted_ids, std::uintptr_t expert_ids, std::uintptr_t n_pad,
                             std::uintptr_t slot_pos, std::uintptr_t offsets, std::uintptr_t counts,
                             std::uintptr_t dropped, std::uintptr_t invalid, std::uintptr_t workspace,
                             std::uintptr_t stream) {
    check_cuda(pyscale::moe::align_cuda(ptr<const int32_t>(ids), slots, n_experts, block, capacity,
                                        ptr<int32_t>(sorted_ids), ptr<int32_t>(expert_ids), ptr<int32_t>(n_pad),
                                        ptr<int32_t>(slot_pos), ptr<int32_t>(offsets), ptr<int32_t>(counts),
                                        ptr<int32_t>(dropped), ptr<int32_t>(invalid), ptr<int32_t>(workspace),
                                        ptr<void>(stream)),
               "moe_align");
  });
#endif
}

// NVML power sampler (see power/nvml_sampler.h); the trace comes back as parallel lists.
void bind_power(py::module_& m) {
  using pyscale::power::NvmlSampler;
  py::class_<NvmlSampler>(m, "NvmlSampler")
      .def(py::init<const std::string&, const std::string&, int, double>(), py::arg("library"), py::arg("uuid"),
           py::arg("index"), py::arg("interval_s"))
      .def("start", &NvmlSampler::start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &NvmlSampler::stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("running", &NvmlSampler::running)
      .def_property_readonly("interval_s", &NvmlSampler::interval_s)
      .def_property_readonly("library", &NvmlSampler::library)
      .def_property_readonly("power_source", &NvmlSampler::power_source)
      .def("error", &NvmlSampler::error)
      .def("trace", [](const NvmlSampler& s) {
        const auto samples = s.samples();
        py::list t, p, e, ps, es;
        for (const auto& x : samples) {
          t.append(static_cast<double>(x.t_ns) * 1e-9);
          p.append(x.power_mw >= 0 ? py::object(py::float_(static_cast<double>(x.power_mw) * 1e-3)) : py::object(py::none()));
          e.append(x.energy_mj >= 0 ? py::object(py::int_(x.energy_mj)) : py::object(py::none()));
          ps.append(x.power_status);
          es.append(x.energy_status);
        }
        py::dict out;
        out["timestamp_s"] = t;
        out["power_w"] = p;
        out["energy_mj"] = e;
        out["power_status"] = ps;
        out["energy_status"] = es;
        return out;
      });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyscale native extension (torch-free): CPU ops, CUDA launchers when built with nvcc";
#ifdef PYSCALE_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  // {"compiled": bool, "device_count": int, "runtime_version": int, "driver_version": int, "error": str}
  m.def("cuda_status", []() {
    py::dict out;
#ifdef PYSCALE_WITH_CUDA
    const pyscale::CudaStatus s = pyscale::cuda_status();
    out["compiled"] = true;
    out["device_count"] = s.device_count;
    out["runtime_version"] = s.runtime_version;
    out["driver_version"] = s.driver_version;
    out["error"] = s.error;
#else
    out["compiled"] = false;
    out["device_count"] = 0;
    out["runtime_version"] = 0;
    out["driver_version"] = 0;
    out["error"] = std::string("pyscale._C was built without CUDA (nvcc was not found at install time)");
#endif
    return out;
  });
  bind_int4(m);
  bind_moe(m);
  bind_power(m);
}

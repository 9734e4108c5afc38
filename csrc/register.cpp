// Registers the kernels as the ops of the `act_fast_cpu` library (CPU tensors only). The Python
// bodies of the act_fast::* custom ops call them when act_fast.ops.backend.implementation(x) says
// "cpu"; their schemas follow the canonical argument order of the act_fast ops, with the output
// last.
#include <torch/library.h>

#include <string>

#include "common.h"

namespace act_fast_cpu {

void affine_transport_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const std::optional<at::Tensor>& strength, double scalar_strength,
                          const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                          const std::optional<at::Tensor>& map_index, int64_t channel_dim, bool pool_spatial,
                          const at::Tensor& out);
void rms_norm_transport_cpu(const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
                            const at::Tensor& weight, const at::Tensor& bias,
                            const std::optional<at::Tensor>& strength, double scalar_strength,
                            const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                            const std::optional<at::Tensor>& map_index, double eps, double weight_offset,
                            bool cast_before_scale, const at::Tensor& out);
void layer_norm_transport_cpu(const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
                              const std::optional<at::Tensor>& norm_bias, const at::Tensor& weight,
                              const at::Tensor& bias, const std::optional<at::Tensor>& strength,
                              double scalar_strength, const std::optional<at::Tensor>& lo,
                              const std::optional<at::Tensor>& hi, const std::optional<at::Tensor>& map_index,
                              double eps, const at::Tensor& out);
void stats_update_cpu(const at::Tensor& x, const std::optional<at::Tensor>& row_mask, const at::Tensor& count,
                      const at::Tensor& mean, const at::Tensor& m2, const at::Tensor& vmin, const at::Tensor& vmax,
                      const at::Tensor& nan, const at::Tensor& pos_inf, const at::Tensor& neg_inf,
                      const at::Tensor& hist, const at::Tensor& centre, const at::Tensor& exp_offset,
                      int64_t mantissa_bits, int64_t exp_min, int64_t exp_max);

#define ACT_FAST_STRINGIFY_(x) #x
#define ACT_FAST_STRINGIFY(x) ACT_FAST_STRINGIFY_(x)

// What this build vectorizes for: the CPU_CAPABILITY it was compiled with and the float lanes.
std::string build_info() {
#ifdef CPU_CAPABILITY
  const std::string capability = ACT_FAST_STRINGIFY(CPU_CAPABILITY);
#else
  const std::string capability = "DEFAULT";
#endif
  return capability + ", " + std::to_string(kVec) + " float lanes";
}

}  // namespace act_fast_cpu

TORCH_LIBRARY(act_fast_cpu, m) {
  m.def(
      "affine_transport(Tensor x, Tensor weight, Tensor bias, Tensor? strength, float scalar_strength, "
      "Tensor? lo, Tensor? hi, Tensor? map_index, int channel_dim, bool pool_spatial, Tensor(a!) out) -> ()");
  m.def(
      "rms_norm_transport(Tensor x, Tensor? norm_weight, Tensor weight, Tensor bias, Tensor? strength, "
      "float scalar_strength, Tensor? lo, Tensor? hi, Tensor? map_index, float eps, float weight_offset, "
      "bool cast_before_scale, Tensor(a!) out) -> ()");
  m.def(
      "layer_norm_transport(Tensor x, Tensor? norm_weight, Tensor? norm_bias, Tensor weight, Tensor bias, "
      "Tensor? strength, float scalar_strength, Tensor? lo, Tensor? hi, Tensor? map_index, float eps, "
      "Tensor(a!) out) -> ()");
  m.def(
      "stats_update(Tensor x, Tensor? row_mask, Tensor(a!) count, Tensor(b!) mean, Tensor(c!) m2, "
      "Tensor(d!) vmin, Tensor(e!) vmax, Tensor(f!) nan, Tensor(g!) pos_inf, Tensor(h!) neg_inf, "
      "Tensor(i!) hist, Tensor centre, Tensor exp_offset, int mantissa_bits, int exp_min, int exp_max) -> ()");
  m.def("build_info() -> str", &act_fast_cpu::build_info);
}

TORCH_LIBRARY_IMPL(act_fast_cpu, CPU, m) {
  m.impl("affine_transport", &act_fast_cpu::affine_transport_cpu);
  m.impl("rms_norm_transport", &act_fast_cpu::rms_norm_transport_cpu);
  m.impl("layer_norm_transport", &act_fast_cpu::layer_norm_transport_cpu);
  m.impl("stats_update", &act_fast_cpu::stats_update_cpu);
}

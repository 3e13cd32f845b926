/// @file ring_plan_cpu.hpp
/// @brief Runs a RingPlan on the CPU with the reference kernels: every operation the CUDA driver
/// would issue, in an order the plan's happens-before relation allows, on host buffers.
///
/// This is how the plan is tested without a GPU (tests/cuda/ring_plan_test.cpp) and how tutorial
/// 12 shows it: the buffers start poisoned with NaN, so a read of bytes nothing wrote spoils the
/// result; a random order (any topological order of plan_graph()) stands in for the GPU's freedom
/// to run unordered work in any interleaving. Plans must be built with input_bytes = 4 (float32),
/// and each operation runs whole (races inside one operation are the hazard checker's business).
/// Library ringattn::ring_plan_cpu (links the reference).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/cuda/ring_plan.hpp"

namespace ringattn::cuda {

/// Host memory for every buffer of a plan, as float32 elements, each NaN at the start.
class PlanMemory {
 public:
  /// Allocates every buffer of @p plan; throws ringattn::Error unless plan.input_bytes == 4.
  explicit PlanMemory(const RingPlan& plan);
  /// The elements of buffer @p name of rank @p rank (throws ringattn::Error if there is none).
  [[nodiscard]] std::vector<float>& buffer(int rank, const std::string& name);
  /// The elements of buffer number @p index (an index into RingPlan::buffers).
  [[nodiscard]] std::vector<float>& at(int index) { return buffers_.at(static_cast<std::size_t>(index)); }

 private:
  const RingPlan* plan_;
  std::vector<std::vector<float>> buffers_;
};

/// Runs every operation of @p plan on @p memory. @p seed = 0: in issue order; otherwise in a
/// random topological order of plan_graph(plan) drawn from @p seed. Returns the number of graph
/// nodes run; throws ringattn::Error for a malformed plan or a cycle.
std::size_t interpret_plan(const RingPlan& plan, PlanMemory& memory, std::uint32_t seed);

}  // namespace ringattn::cuda

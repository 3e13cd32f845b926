/// @file ring_plan.hpp
/// @brief The CUDA ring as data: the ordered list of operations every rank queues on its compute
/// and communication streams, the events that order them, and a checker that proves no two
/// unordered operations touch the same bytes.
///
/// The ring driver (ring.hpp) does not decide anything while it runs: it builds a RingPlan from
/// core's RingSchedule once, then walks it, turning every operation into one CUDA or NCCL call.
/// Because the plan is plain data it is tested on the CPU: check_hazards() builds the
/// happens-before order CUDA guarantees (stream order, event record -> wait, the transfer of a
/// ring shift) and reports any pair of operations that access overlapping bytes, one of them
/// writing, without being ordered (a race that would corrupt a K/V block in flight); and the
/// tests run the plan's operations in random orders allowed by that relation with CPU kernels
/// and compare with the reference.
///
/// Storage inside the plan is "segment-major": a rank's shard of a (B, S_r, H, D) tensor is
/// stored segment after segment, each segment a contiguous (B, L_g, H, D) tensor, so every
/// (query segment, key segment) pair of the schedule is one kernel call on contiguous memory.
/// For B = 1 or a single segment per rank (contiguous and striped layouts) that is the user's
/// own layout and the plan reads and writes the user's buffers directly; otherwise it gathers
/// and scatters with 2-D copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/core/schedule.hpp"
#include "ringattn/core/shape.hpp"

namespace ringattn::cuda {

/// The two streams of a rank: kernels run on Compute, ring transfers on Comm.
enum class PlanStream : std::uint8_t {
  Compute,  ///< attention kernels, merges, gathers
  Comm,     ///< the ring shifts (NCCL send/recv or device-to-device copies)
};

/// A buffer of one rank: either one the caller passes in (bound by name at run time) or one
/// the driver allocates.
struct PlanBuffer {
  int rank = 0;              ///< the rank that owns it
  std::string name;          ///< e.g. "q", "kv0", "o_acc" (unique per rank)
  std::size_t bytes = 0;     ///< size
  bool user = false;         ///< true: the caller's tensor (q, k, v, out, lse, dout, dq, dk, dv)
};

/// A byte range of a buffer.
struct Region {
  int buffer = -1;            ///< index into RingPlan::buffers
  std::size_t offset = 0;     ///< first byte
  std::size_t bytes = 0;      ///< length
  /// Equal when buffer, offset and bytes are equal.
  friend bool operator==(const Region&, const Region&) = default;
};

/// Element types an operation reads or writes.
enum class PlanType : std::uint8_t {
  Input,  ///< the ring's input dtype (bf16, fp16 or fp32: RingPlan::input_bytes)
  F32,    ///< float32
};

/// What an operation does. Sizes are in elements of the operand types.
enum class OpKind : std::uint8_t {
  Copy2D,    ///< rows x width bytes from src (pitch src_pitch) to dst (pitch dst_pitch)
  Convert,   ///< like Copy2D but element-wise F32 -> Input type: rows x cols elements
  Fill,      ///< dst[0..n) = value (float32 elements)
  Forward,   ///< (O_part, LSE_part) of a query segment against a key segment
  Merge,     ///< fold (O_part, LSE_part) into (O_acc, LSE_acc)
  Delta,     ///< D = rowsum(dO * O) of a query segment
  Backward,  ///< dQ, dK, dV of a query segment against a key segment, accumulated
  Add,       ///< dst[0..n) += src[0..n), float32
  Record,    ///< record event `event` on the stream
  Wait,      ///< the stream waits for the latest record of `event`
  Shift,     ///< ring transfer: every rank sends its parts to rank + 1 and receives from rank - 1
};

/// "copy2d", "convert", ... (for printing plans).
[[nodiscard]] const char* to_string(OpKind kind);

/// One piece of a shift on one rank: send `src` to the next rank's `dst_next` region. The
/// receiver's region has the same length.
struct ShiftPart {
  Region src;       ///< on this rank
  Region dst_next;  ///< on rank + 1
};

/// One operation of one rank on one of its streams (Shift: of every rank, on their Comm streams).
struct PlanOp {
  OpKind kind = OpKind::Record;          ///< what it does
  int rank = 0;                          ///< the rank whose stream queues it (Shift: -1, all)
  PlanStream stream = PlanStream::Compute;  ///< the stream it is queued on
  int step = -1;                         ///< ring step it belongs to (-1: before or after the ring)
  std::string label;                     ///< what it is, for printing and timelines

  Region src;                ///< Copy2D / Convert / Add: the source
  Region dst;                ///< Copy2D / Convert / Fill / Add: the destination
  std::size_t width = 0;     ///< Copy2D: bytes per row; Convert: elements per row
  std::size_t rows = 0;      ///< Copy2D / Convert: number of rows
  std::size_t src_pitch = 0; ///< Copy2D: bytes between source rows; Convert: elements
  std::size_t dst_pitch = 0; ///< Copy2D: bytes between destination rows; Convert: elements
  std::size_t n = 0;         ///< Fill / Add: float32 elements
  float value = 0.0f;        ///< Fill: the value written

  AttentionShape shape;      ///< Forward / Backward / Merge / Delta: B, q rows, k rows, H_q, H_kv, D
  Positions q_pos;           ///< global positions of the query rows
  Positions k_pos;           ///< global positions of the key rows
  bool causal = false;       ///< apply the causal mask over those positions
  Region q;                  ///< Input type (B, q rows, H_q, D)
  Region k;                  ///< Input type (B, k rows, H_kv, D)
  Region v;                  ///< Input type (B, k rows, H_kv, D)
  Region out;                ///< Forward: O_part F32; Delta/Backward: O in Input type
  Region lse;                ///< F32 (B, H_q, rows): Forward writes it, Backward reads it
  Region dout;               ///< dO, Input type
  Region delta;              ///< D = rowsum(dO * O), F32 (B, H_q, rows)
  Region dq;                 ///< F32, accumulated into
  Region dk;                 ///< F32, accumulated into
  Region dv;                 ///< F32, accumulated into
  Region acc_out;            ///< Merge: the running O (F32)
  Region acc_lse;            ///< Merge: the running LSE (F32)

  int event = -1;            ///< Record / Wait: event index of this rank
  std::vector<std::vector<ShiftPart>> shift;  ///< Shift: shift[r] lists rank r's sends
};

/// Reads and writes of an operation (for the hazard checker and the interpreter).
struct Access {
  int rank = 0;      ///< whose stream performs it (a Shift transfer: the receiver)
  Region region;     ///< bytes touched
  bool write = false;  ///< true for a write, false for a read
};

/// The whole ring, forward or backward, for every rank.
struct RingPlan {
  bool backward = false;        ///< a backward plan
  int ranks = 0;                ///< N
  int steps = 0;                ///< N
  AttentionShape shape;         ///< the global shape (S_q, S_kv of the whole sequence)
  Layout layout = Layout::Contiguous;  ///< how the sequence is split
  bool causal = false;          ///< causal masking
  int input_bytes = 2;          ///< bytes of an Input element (2: bf16/fp16, 4: fp32)
  int output_bytes = 4;         ///< forward: bytes of an element of the caller's O (4 or input_bytes)
  float scale = 1.0f;           ///< softmax scale
  std::vector<PlanBuffer> buffers;  ///< every buffer of every rank
  std::vector<int> events;      ///< events per rank
  std::vector<PlanOp> ops;      ///< in issue order

  /// Index of buffer @p name of rank @p rank; throws ringattn::Error if there is none.
  [[nodiscard]] int buffer(int rank, const std::string& name) const;
  /// Human-readable listing, one line per operation.
  [[nodiscard]] std::string describe() const;
};

/// What the planner needs besides the schedule.
struct PlanOptions {
  int input_bytes = 2;              ///< 2 (bf16/fp16) or 4 (fp32)
  int output_bytes = 4;             ///< forward O returned as float32 (4) or the input type
  float scale = 1.0f;               ///< softmax scale
};

/// The forward plan: every rank's (O, LSE) of its queries against all blocks, K/V double-buffered
/// (the next block's shift is queued before the current block's kernels), partials merged in F32;
/// the first launched pair of each query segment writes the F32 accumulator directly.
/// @p shape is global; throws ringattn::Error if the schedule and shape disagree.
[[nodiscard]] RingPlan plan_forward(const RingSchedule& schedule, const AttentionShape& shape,
                                    const PlanOptions& options);
/// The backward plan: D pre-pass, dQ accumulated at home, dK/dV computed into a scratch block,
/// added to the travelling accumulator when it arrives and shifted on; after the last step every
/// dK/dV block takes one hop home.
[[nodiscard]] RingPlan plan_backward(const RingSchedule& schedule, const AttentionShape& shape,
                                     const PlanOptions& options);

/// The bytes an operation reads and writes. A Shift yields, per receiving rank, a read of the
/// sender's src and a write of the receiver's dst.
[[nodiscard]] std::vector<Access> accesses(const RingPlan& plan, const PlanOp& op);

/// One race found by check_hazards: two operations that touch overlapping bytes of a buffer, at
/// least one writing, with no happens-before order between them.
struct Hazard {
  std::size_t first = 0;   ///< index into RingPlan::ops of one operation
  std::size_t second = 0;  ///< index into RingPlan::ops of the other
  int buffer = -1;                    ///< the buffer
  std::string message;                ///< one line naming both operations
};

/// Checks the plan: every event waited on was recorded before, regions lie inside their
/// buffers, shift parts match in length, and no two operations race (happens-before as CUDA
/// defines it: program order per stream; a Wait follows the latest Record of its event issued
/// before it; a shift's transfer into rank r follows everything queued before it on the Comm
/// streams of r and r - 1, and later Comm work of both follows it). Returns the races (empty:
/// the plan is race-free); throws ringattn::Error for a malformed plan.
[[nodiscard]] std::vector<Hazard> check_hazards(const RingPlan& plan);

/// A node of the happens-before graph: an operation on one rank's stream, or one transfer of a
/// shift (into rank `rank`).
struct PlanNode {
  std::size_t op = 0;  ///< index into RingPlan::ops
  int rank = 0;        ///< the stream's rank (a transfer: the receiving rank)
  bool transfer = false;  ///< one rank's receive of a Shift
};

/// The happens-before graph of a plan: nodes and, for each, the nodes that must finish first.
struct PlanGraph {
  std::vector<PlanNode> nodes;                ///< every node
  std::vector<std::vector<std::size_t>> preds; ///< direct predecessors of each node
};
/// Builds the graph check_hazards() uses (the CPU interpreter in the tests runs it in random
/// topological orders). Throws ringattn::Error for a malformed plan.
[[nodiscard]] PlanGraph plan_graph(const RingPlan& plan);

}  // namespace ringattn::cuda

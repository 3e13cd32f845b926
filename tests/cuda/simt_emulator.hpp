// The SIMT kernels of cuda/ run on the CPU: every CUDA thread of a block is a fiber, and the
// block's fibers take turns between the points where CUDA threads meet (__syncthreads,
// __syncwarp, warp shuffles).
//
// What this file is for: the simple, tiled, decode, merge and ring kernels are plain per-thread
// CUDA code. Their headers (cuda/src/*.cuh) hold the kernels and the launch sequence that picks
// the template instances and the grids (run_forward_simple, ...), written over a launcher: on the
// GPU, StreamLauncher queues kernel<<<grid, block, 0, stream>>>; here, SimtLauncher runs the same
// functions, compiled by the host compiler, block by block. Include this header *before* those
// headers: it maps the CUDA built-ins they use onto the emulation.
//
//   threadIdx, blockIdx, blockDim, gridDim   the running fiber's coordinates
//   __shared__                              a thread_local static: one block runs at a time, and
//                                           each launch runs on a fresh thread (zeroed arrays)
//   __syncthreads()                         a barrier of the block's threads
//   __syncwarp(mask), __shfl_xor_sync(...)  a rendezvous of the lanes in mask
//
// A block runs as follows: its warps take turns, each running until all of its threads wait at
// __syncthreads or have exited; within a warp each runnable fiber runs until it reaches a warp
// operation, a barrier or its end, and a warp operation completes as soon as every lane it names
// has arrived, so a warp runs ahead of the others as far as the barriers let it. When no warp
// can go on, the barrier completes and the turns start again. The order of the warps, of the
// lanes within a warp, and of the blocks is the schedule: ascending, descending or shuffled. A
// kernel whose threads communicate without a barrier between (a race) gives results that depend
// on that order, so a test runs every schedule and requires the same bits from each.
//
// Findings (the CUDA rule each one breaks; the hardware may hang or compute garbage):
//   - a __syncthreads that not every thread of the block reaches (some exited), or that threads
//     reach at different call sites;
//   - a warp operation whose mask names a lane that has exited, does not exist, or waits
//     elsewhere; lanes that meet with different masks, operations or call sites; a shuffle whose
//     source lane is not in the mask;
//   - a deadlock: no fiber can run and nothing can complete.
// What it cannot see: uninitialized shared memory (it is zero at a launch's start and keeps the
// previous block's values between blocks, not poisoned; the schedules, with blocks in different
// orders, expose a kernel that reads what it did not write), global accesses out of bounds (the
// test binaries are built with AddressSanitizer for that), memory ordering beyond barriers,
// timing, and the GPU's float intrinsics (expf here is the C library's).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define RINGATTN_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define RINGATTN_SIMT_ASAN 1
#endif
#endif

// ---- switching between fibers -----------------------------------------------------------------
// On x86-64 a fiber switch saves the callee-saved registers, MXCSR and the x87 control word on the
// old stack and loads them from the new one (no system call, unlike swapcontext, which also saves
// the signal mask, and which AddressSanitizer intercepts to clear the shadow of the whole target
// stack at every switch: together ~2/3 of an emulation's time). Elsewhere, ucontext.
#if defined(__x86_64__) && !defined(RINGATTN_SIMT_UCONTEXT)
#define RINGATTN_SIMT_ASM_SWITCH 1
// void ringattn_simt_switch(void** save_sp, void* next_sp): saves the running context on its stack
// and its stack pointer in *save_sp, then resumes the context whose stack pointer is next_sp.
// Weak: every test binary that includes this header defines it once.
extern "C" void ringattn_simt_switch(void** save_sp, void* next_sp);
asm(R"(
  .text
  .weak ringattn_simt_switch
  .type ringattn_simt_switch, @function
ringattn_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ringattn_simt_switch, .-ringattn_simt_switch
)");
#else
#include <ucontext.h>
#endif

namespace ringattn::simt {

namespace internal {

/// A suspended execution context: a stack pointer (x86-64) or a ucontext.
struct Context {
#if defined(RINGATTN_SIMT_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
};

/// Makes @p c start @p entry on the stack [stack, stack + bytes) at its first resume.
inline void prepare(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
#if defined(RINGATTN_SIMT_ASAN)
  // The stack's shadow may still hold the redzones of frames a previous fiber left there.
  __asan_unpoison_memory_region(stack, bytes);
#endif
#if defined(RINGATTN_SIMT_ASM_SWITCH)
  // The frame ringattn_simt_switch pops, from the 16-byte aligned top down: a null return address
  // for entry (it never returns), entry's address (popped by ret, so entry starts with the stack
  // aligned as after a call), rbp, rbx, r12..r15 (zeros), then MXCSR and the x87 control word at
  // their defaults (round to nearest, all exceptions masked).
  auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t{15};
  auto* slot = reinterpret_cast<std::uint64_t*>(top);
  *--slot = 0;
  *--slot = reinterpret_cast<std::uint64_t>(entry);
  for (int r = 0; r < 6; ++r) *--slot = 0;
  *--slot = std::uint64_t{0x1F80} | (std::uint64_t{0x037F} << 32);
  c.sp = slot;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

/// Saves the running context in @p from and resumes @p to.
inline void switch_context(Context& from, Context& to) {
#if defined(RINGATTN_SIMT_ASM_SWITCH)
  ringattn_simt_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

}  // namespace internal


/// The order in which fibers run within a round, and blocks within a grid.
enum class Schedule { Ascending, Descending, Shuffled };

inline const char* to_string(Schedule s) {
  switch (s) {
    case Schedule::Ascending: return "ascending";
    case Schedule::Descending: return "descending";
    case Schedule::Shuffled: return "shuffled";
  }
  return "?";
}

/// What the emulation found wrong, in the order found (capped).
struct Findings {
  long count = 0;
  std::vector<std::string> messages;
  void add(const std::string& what) {
    ++count;
    if (messages.size() < 1000) messages.push_back(what);
  }
  [[nodiscard]] bool empty() const { return count == 0; }
  [[nodiscard]] std::string summary() const {
    std::ostringstream os;
    os << count << " finding(s)";
    for (std::size_t i = 0; i < std::min<std::size_t>(messages.size(), 6); ++i) os << "\n  " << messages[i];
    return os.str();
  }
};

/// The coordinates of the running CUDA thread.
struct ThreadCoords {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
};

namespace internal {

enum class State { Runnable, AtBarrier, AtWarpOp, Done };
enum class WarpOp { Sync, ShflXor };

inline const char* to_string(WarpOp op) { return op == WarpOp::Sync ? "__syncwarp" : "__shfl_xor_sync"; }

struct Fiber {
  Context context;
  std::unique_ptr<char[]> stack;
  State state = State::Runnable;
  int line = 0;             // call site of the barrier or warp operation it waits at
  WarpOp op = WarpOp::Sync;
  unsigned mask = 0;
  int lane_mask = 0;        // shuffle: the xor operand
  int width = 32;
  std::uint64_t value = 0;  // shuffle: this lane's operand, then its result (bits)
  ThreadCoords coords;
  void* fake_stack = nullptr;  // AddressSanitizer's fake stack of this fiber while switched out
};

/// One block at a time: its fibers, the scheduler's context, and what the block has found.
class BlockRunner {
 public:
  static constexpr std::size_t kStackBytes = 64 * 1024;

  BlockRunner(Findings& findings, Schedule schedule, std::uint64_t seed)
      : findings_(findings), schedule_(schedule), rng_(seed) {}

  /// Runs @p body as every thread of block @p block of a grid of @p grid blocks of @p threads.
  void run(unsigned block, unsigned grid, unsigned threads, const std::function<void()>& body, const char* name) {
    body_ = &body;
    name_ = name;
    block_ = block;
    if (fibers_.size() != threads) {
      fibers_.clear();
      fibers_.resize(threads);
      for (Fiber& f : fibers_) f.stack.reset(new char[kStackBytes]);
    }
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = fibers_[t];
      f.state = State::Runnable;
      f.coords = ThreadCoords{uint3{t, 0, 0}, uint3{block, 0, 0}, dim3(threads), dim3(grid)};
      f.fake_stack = nullptr;
      prepare(f.context, f.stack.get(), kStackBytes, &BlockRunner::entry);
    }
    // Warps run one at a time, each until it waits at a barrier or exits: a warp's shuffles and
    // __syncwarp complete as soon as its lanes have all arrived, so it runs ahead of the other
    // warps as far as the barriers let it (as warps do on a GPU). The schedule orders the warps
    // and the lanes within a warp.
    const unsigned warps = (threads + 31) / 32;
    std::vector<unsigned> warp_order(warps);
    std::iota(warp_order.begin(), warp_order.end(), 0u);
    std::vector<unsigned> lane_order(32);
    std::iota(lane_order.begin(), lane_order.end(), 0u);
    if (schedule_ == Schedule::Descending) {
      std::reverse(warp_order.begin(), warp_order.end());
      std::reverse(lane_order.begin(), lane_order.end());
    }
    while (true) {
      if (schedule_ == Schedule::Shuffled) std::shuffle(warp_order.begin(), warp_order.end(), rng_);
      for (unsigned w : warp_order) {
        do {
          if (schedule_ == Schedule::Shuffled) std::shuffle(lane_order.begin(), lane_order.end(), rng_);
          for (unsigned lane : lane_order) {
            const unsigned t = 32 * w + lane;
            if (t < threads && fibers_[t].state == State::Runnable) resume(t);
          }
        } while (complete_warp_op(w));
      }
      if (std::all_of(fibers_.begin(), fibers_.end(), [](const Fiber& f) { return f.state == State::Done; })) return;
      if (!complete_barrier()) {
        report_deadlock();
        return;  // the fibers left waiting are abandoned; their stacks are reused by the next run
      }
    }
  }

  /// The running fiber (valid inside a kernel).
  Fiber& running() { return fibers_[running_]; }

  /// Called by the running fiber: wait at a rendezvous, return when it completes.
  void wait(State state) {
    Fiber& f = running();
    f.state = state;
    switch_to_scheduler(f);
  }

  static BlockRunner*& current() {
    thread_local BlockRunner* runner = nullptr;
    return runner;
  }

 private:
  std::string where(unsigned t, int line) const {
    std::ostringstream os;
    os << name_ << " block " << block_ << " thread " << t << " (line " << line << ")";
    return os.str();
  }

  static void entry() {
    BlockRunner& self = *current();
#if defined(RINGATTN_SIMT_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &self.scheduler_stack_bottom_, &self.scheduler_stack_size_);
#endif
    (*self.body_)();
    Fiber& f = self.running();
    f.state = State::Done;
#if defined(RINGATTN_SIMT_ASAN)
    __sanitizer_start_switch_fiber(nullptr, self.scheduler_stack_bottom_, self.scheduler_stack_size_);
#endif
    Context finished;  // never resumed
    switch_context(finished, self.scheduler_);
  }

  void resume(unsigned t) {
    running_ = t;
    Fiber& f = fibers_[t];
#if defined(RINGATTN_SIMT_ASAN)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack.get(), kStackBytes);
#endif
    switch_context(scheduler_, f.context);
#if defined(RINGATTN_SIMT_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  }

  void switch_to_scheduler(Fiber& f) {
#if defined(RINGATTN_SIMT_ASAN)
    __sanitizer_start_switch_fiber(&f.fake_stack, scheduler_stack_bottom_, scheduler_stack_size_);
#endif
    switch_context(f.context, scheduler_);
#if defined(RINGATTN_SIMT_ASAN)
    __sanitizer_finish_switch_fiber(f.fake_stack, &scheduler_stack_bottom_, &scheduler_stack_size_);
#endif
  }

  // Completes warp @p w's operation if every lane it names has arrived; true if it did.
  bool complete_warp_op(unsigned w) {
    const auto threads = static_cast<unsigned>(fibers_.size());
    const unsigned w0 = 32 * w;
    {
      // The first waiting lane's mask names the lanes that must meet.
      unsigned first = threads;
      for (unsigned t = w0; t < std::min(w0 + 32, threads); ++t) {
        if (fibers_[t].state == State::AtWarpOp) {
          first = t;
          break;
        }
      }
      if (first == threads) return false;
      const Fiber& lead = fibers_[first];
      // Ready when no lane of the mask is still running or waits at a barrier. A lane that has
      // exited, or does not exist, cannot take part: a finding once the others are all here.
      bool ready = true;
      for (unsigned lane = 0; lane < 32 && ready; ++lane) {
        const unsigned t = w0 + lane;
        if ((lead.mask >> lane & 1u) && t < threads && fibers_[t].state != State::Done &&
            fibers_[t].state != State::AtWarpOp) {
          ready = false;
        }
      }
      if (!ready) return false;
      for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(lead.mask >> lane & 1u)) continue;
        const unsigned t = w0 + lane;
        if (t >= threads) {
          findings_.add(where(first, lead.line) + ": " + to_string(lead.op) + " mask names lane " +
                        std::to_string(lane) + ", which does not exist (partial warp)");
        } else if (fibers_[t].state == State::Done) {
          findings_.add(where(first, lead.line) + ": " + to_string(lead.op) + " mask names lane " +
                        std::to_string(lane) + ", which has exited");
        }
      }
      // Every lane of the mask is here: they must agree on what they are doing.
      for (unsigned lane = 0; lane < 32; ++lane) {
        const unsigned t = w0 + lane;
        if (!(lead.mask >> lane & 1u) || t >= threads || fibers_[t].state != State::AtWarpOp) continue;
        const Fiber& f = fibers_[t];
        if (f.mask != lead.mask || f.op != lead.op || f.line != lead.line) {
          findings_.add(where(t, f.line) + ": " + to_string(f.op) + " meets " + to_string(lead.op) + " of thread " +
                        std::to_string(first) + " (line " + std::to_string(lead.line) + ") with mask " +
                        std::to_string(f.mask) + " vs " + std::to_string(lead.mask));
        }
      }
      if (lead.op == WarpOp::ShflXor) {
        std::uint64_t results[32] = {};
        for (unsigned lane = 0; lane < 32; ++lane) {
          const unsigned t = w0 + lane;
          if (!(lead.mask >> lane & 1u) || t >= threads || fibers_[t].state != State::AtWarpOp) continue;
          const Fiber& f = fibers_[t];
          // __shfl_xor_sync: within segments of `width` lanes, source = lane ^ lane_mask; a
          // source outside the segment gives the lane its own value.
          const unsigned width = static_cast<unsigned>(f.width);
          unsigned src = lane ^ static_cast<unsigned>(f.lane_mask);
          if (src / width != lane / width) src = lane;
          const unsigned st = w0 + src;
          if (!(lead.mask >> src & 1u) || st >= threads || fibers_[st].state != State::AtWarpOp) {
            findings_.add(where(t, f.line) + ": __shfl_xor_sync reads lane " + std::to_string(src) +
                          ", which is not taking part");
            results[lane] = f.value;
          } else {
            results[lane] = fibers_[st].value;
          }
        }
        for (unsigned lane = 0; lane < 32; ++lane) {
          const unsigned t = w0 + lane;
          if (!(lead.mask >> lane & 1u) || t >= threads || fibers_[t].state != State::AtWarpOp) continue;
          fibers_[t].value = results[lane];
        }
      }
      for (unsigned lane = 0; lane < 32; ++lane) {
        const unsigned t = w0 + lane;
        if (!(lead.mask >> lane & 1u) || t >= threads || fibers_[t].state != State::AtWarpOp) continue;
        fibers_[t].state = State::Runnable;
      }
    }
    return true;
  }

  // Completes __syncthreads when every thread that has not exited waits there; true if it did.
  bool complete_barrier() {
    int line = -1;
    unsigned waiting = 0, done = 0, first = 0;
    for (unsigned t = 0; t < fibers_.size(); ++t) {
      const Fiber& f = fibers_[t];
      if (f.state == State::Done) {
        ++done;
      } else if (f.state == State::AtBarrier) {
        if (waiting++ == 0) {
          line = f.line;
          first = t;
        }
      } else {
        return false;  // a thread still waits at a warp operation: not every thread is here
      }
    }
    if (waiting == 0) return false;
    if (done > 0) {
      findings_.add(where(first, line) + ": __syncthreads reached by " + std::to_string(waiting) + " of " +
                    std::to_string(fibers_.size()) + " threads; the others have exited");
    }
    for (unsigned t = 0; t < fibers_.size(); ++t) {
      Fiber& f = fibers_[t];
      if (f.state != State::AtBarrier) continue;
      if (f.line != line) {
        findings_.add(where(t, f.line) + ": __syncthreads meets the one at line " + std::to_string(line) +
                      " (divergent barriers)");
      }
      f.state = State::Runnable;
    }
    return true;
  }

  void report_deadlock() {
    std::ostringstream os;
    os << name_ << " block " << block_ << ": deadlock;";
    int shown = 0;
    for (unsigned t = 0; t < fibers_.size() && shown < 4; ++t) {
      const Fiber& f = fibers_[t];
      if (f.state == State::AtBarrier) {
        os << " thread " << t << " waits at __syncthreads (line " << f.line << ")";
        ++shown;
      } else if (f.state == State::AtWarpOp) {
        os << " thread " << t << " waits at " << to_string(f.op) << " (line " << f.line << ")";
        ++shown;
      }
    }
    findings_.add(os.str());
  }

  Findings& findings_;
  Schedule schedule_;
  std::mt19937_64 rng_;
  std::vector<Fiber> fibers_;
  Context scheduler_;
  unsigned running_ = 0;
  unsigned block_ = 0;
  const std::function<void()>* body_ = nullptr;
  const char* name_ = "";
  const void* scheduler_stack_bottom_ = nullptr;
  std::size_t scheduler_stack_size_ = 0;
};

template <class T>
std::uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
T from_bits(std::uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace internal

/// The running CUDA thread's coordinates (what threadIdx & co. read).
inline ThreadCoords& current() { return internal::BlockRunner::current()->running().coords; }

/// __syncthreads() at source line @p line.
inline void sync_threads(int line) {
  internal::BlockRunner& r = *internal::BlockRunner::current();
  r.running().line = line;
  r.wait(internal::State::AtBarrier);
}

/// __syncwarp(mask) at source line @p line.
inline void sync_warp(int line, unsigned mask = 0xffffffffu) {
  internal::BlockRunner& r = *internal::BlockRunner::current();
  internal::Fiber& f = r.running();
  f.line = line;
  f.op = internal::WarpOp::Sync;
  f.mask = mask;
  r.wait(internal::State::AtWarpOp);
}

/// __shfl_xor_sync(mask, value, lane_mask, width) at source line @p line.
template <class T>
T shfl_xor(int line, unsigned mask, T value, int lane_mask, int width = 32) {
  internal::BlockRunner& r = *internal::BlockRunner::current();
  internal::Fiber& f = r.running();
  f.line = line;
  f.op = internal::WarpOp::ShflXor;
  f.mask = mask;
  f.lane_mask = lane_mask;
  f.width = width;
  f.value = internal::to_bits(value);
  r.wait(internal::State::AtWarpOp);
  return internal::from_bits<T>(r.running().value);
}

/// The launcher the kernel headers' run_* functions are given on the CPU: launch(name, kernel,
/// grid, block, args...) runs every block of the grid (in the schedule's order) to completion
/// before it returns, as a stream would before its next launch.
class SimtLauncher {
 public:
  explicit SimtLauncher(Schedule schedule = Schedule::Ascending, std::uint64_t seed = 1)
      : schedule_(schedule), seed_(seed) {}

  template <class... P, class... A>
  void operator()(const char* name, void (*kernel)(P...), unsigned grid, unsigned block, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel arguments");
    const std::tuple<std::decay_t<P>...> bound(static_cast<P>(args)...);
    const std::function<void()> body = [&] { std::apply(kernel, bound); };
    launches_.push_back(name);
    // Each launch runs on a thread of its own: __shared__ arrays are thread_local statics, so a
    // launch starts with them zeroed whatever ran before (the blocks of one launch share them,
    // one block after the other, as blocks on one multiprocessor reuse its shared memory).
    std::thread worker([&] {
      internal::BlockRunner runner(findings_, schedule_, seed_ + launches_.size());
      internal::BlockRunner::current() = &runner;
      std::vector<unsigned> blocks(grid);
      std::iota(blocks.begin(), blocks.end(), 0u);
      if (schedule_ == Schedule::Descending) std::reverse(blocks.begin(), blocks.end());
      if (schedule_ == Schedule::Shuffled) std::shuffle(blocks.begin(), blocks.end(), std::mt19937_64(seed_));
      for (unsigned b : blocks) runner.run(b, grid, block, body, name);
      internal::BlockRunner::current() = nullptr;
    });
    worker.join();
  }

  /// What every launch so far has found.
  [[nodiscard]] const Findings& findings() const { return findings_; }
  /// The kernels launched so far, in order.
  [[nodiscard]] const std::vector<std::string>& launches() const { return launches_; }

 private:
  Schedule schedule_;
  std::uint64_t seed_;
  Findings findings_;
  std::vector<std::string> launches_;
};

}  // namespace ringattn::simt

// ---- the CUDA built-ins, mapped onto the emulation ---------------------------------------------
#define threadIdx (::ringattn::simt::current().thread_idx)
#define blockIdx (::ringattn::simt::current().block_idx)
#define blockDim (::ringattn::simt::current().block_dim)
#define gridDim (::ringattn::simt::current().grid_dim)
#define __syncthreads() ::ringattn::simt::sync_threads(__LINE__)
#define __syncwarp(...) ::ringattn::simt::sync_warp(__LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(...) ::ringattn::simt::shfl_xor(__LINE__, __VA_ARGS__)
#undef __shared__
#define __shared__ static thread_local
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

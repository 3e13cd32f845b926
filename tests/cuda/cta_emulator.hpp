// A CTA of the tensor-core kernels emulated on the CPU: four warps that run the kernels' own CTA
// programs (forward_cta, backward_cta) and a checker of every shared-memory access.
//
// What this file is for: the kernels' CTA programs (cuda/src/forward_tc_tile.hpp,
// backward_tc_tile.hpp) are the code the GPU runs: which rows a CTA owns, the cp.async pipeline,
// the barriers, the tile schedule, and the warp programs inside. HostCta is the CTA policy they
// run on here (DeviceCta, tc_device.cuh, on the GPU); each warp is a HostWarp (mma_emulator.hpp)
// on its own thread, and the warps take turns: a warp runs until it reaches a barrier or exits,
// then the next one runs, and a barrier releases when every warp still running has reached it.
// So the emulation is deterministic, and it has no data race of its own.
//
// The checker follows the PTX memory model for what these kernels use:
//   - cp.async: a copy is in flight from its issue until the issuing thread's cp.async.wait_group
//     retires its group; only then are the bytes written (here: copied), and they are visible to
//     the issuing thread at once and to any other thread after the next barrier;
//   - a barrier (__syncthreads) orders everything before it against everything after it.
// Each 16-bit word of shared memory carries a shadow: the thread whose copy to it is in flight,
// the thread that last wrote it and in which barrier interval ("epoch"), and the last epoch in
// which each warp read it. A finding is:
//   - a read of a word that a copy may still be writing, or that another thread wrote in the
//     same epoch (no barrier between: RAW), or that nothing ever wrote (stale data);
//   - a write (st.shared or a cp.async) to a word another warp read, or another thread wrote, in
//     the same epoch (WAR, WAW); a cp.async also may not overwrite a word its own warp read in
//     that epoch (the PTX ISA does not order cp.async with the thread's other accesses);
//   - a warp that leaves the CTA while others still wait at a barrier, or a thread that leaves
//     with copies in flight;
//   - a global access outside the buffers a test registers (GlobalMap), a write to a read-only
//     one, or a cp.async whose addresses are not aligned to its size.
// What it leaves to a GPU: the hardware itself (timing, real asynchrony), and everything
// mma_emulator.hpp leaves to it.
#pragma once

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../../cuda/src/forward_tc_tile.hpp"
#include "mma_emulator.hpp"

namespace ringattn::test {

/// What the emulation found wrong: a count and the messages (the first 100,000).
struct Findings {
  long count = 0;
  std::vector<std::string> messages;

  void add(const std::string& what) {
    ++count;
    if (messages.size() < 100000) messages.push_back(what);
  }
  /// The count and the first few messages.
  std::string summary() const {
    std::ostringstream os;
    os << count << " finding(s)";
    for (std::size_t i = 0; i < std::min<std::size_t>(messages.size(), 6); ++i) os << "\n  " << messages[i];
    return os.str();
  }
};

/// The global buffers a kernel may touch. Every access outside them is a finding; a buffer can
/// count the writes to each of its elements (for "every output element written exactly once").
class GlobalMap {
 public:
  struct Buffer {
    std::string name;
    const std::byte* base = nullptr;
    std::size_t bytes = 0;
    bool writable = false;
    std::size_t elem_bytes = 4;
    std::vector<std::uint8_t> writes;  // per element, when counted
  };

  /// Registers [p, p + bytes); @p count_writes keeps a write count per @p elem_bytes element.
  void add(std::string name, const void* p, std::size_t bytes, bool writable, std::size_t elem_bytes = 4,
           bool count_writes = false) {
    Buffer b;
    b.name = std::move(name);
    b.base = static_cast<const std::byte*>(p);
    b.bytes = bytes;
    b.writable = writable;
    b.elem_bytes = elem_bytes;
    if (count_writes) b.writes.assign(bytes / elem_bytes, 0);
    buffers_.push_back(std::move(b));
  }
  const Buffer& buffer(const std::string& name) const {
    for (const auto& b : buffers_) {
      if (b.name == name) return b;
    }
    throw std::logic_error("no buffer " + name);
  }

  /// Whether [p, p + n) lies in a buffer; a finding if not.
  bool read(const void* p, std::size_t n, const char* what, Findings& f) const {
    return find(p, n, false, what, f) != nullptr;
  }
  /// Whether [p, p + n) lies in a writable buffer (a finding if not); counts the write.
  bool write(const void* p, std::size_t n, const char* what, Findings& f) {
    Buffer* b = find(p, n, true, what, f);
    if (b == nullptr || !b->writable) return false;
    if (b->writes.empty()) return true;
    const std::size_t at = static_cast<std::size_t>(static_cast<const std::byte*>(p) - b->base);
    for (std::size_t e = at / b->elem_bytes; e < (at + n + b->elem_bytes - 1) / b->elem_bytes; ++e) {
      if (b->writes[e] < 255) ++b->writes[e];
    }
    return true;
  }

 private:
  Buffer* find(const void* p, std::size_t n, bool writing, const char* what, Findings& f) const {
    const auto* q = static_cast<const std::byte*>(p);
    for (const auto& b : buffers_) {
      if (q >= b.base && q + n <= b.base + b.bytes) {
        if (writing && !b.writable) f.add(std::string(what) + " writes the read-only buffer " + b.name);
        return const_cast<Buffer*>(&b);
      }
    }
    std::ostringstream os;
    os << what << (writing ? " writes " : " reads ") << n << " bytes at " << p << ", outside every buffer";
    f.add(os.str());
    return nullptr;
  }
  std::vector<Buffer> buffers_;
};

/// One CTA's shared memory with its shadow, and the turn-taking of its warps.
template <class Elem>
class CtaRun;

/// The CTA policy of forward_cta / backward_cta for one emulated warp (forward_tc_tile.hpp lists
/// the members); also the hooks through which the warp's HostWarp reports its memory accesses.
template <class Elem>
class HostCta : public WarpHooks {
 public:
  using W = HostWarp<Elem>;

  HostCta(CtaRun<Elem>& run, int warp) : run_(run), warp_(warp) {}

  W& w() { return run_.warps_[static_cast<std::size_t>(warp_)]; }
  int warp() const { return warp_; }
  int block_x() const { return run_.block_[0]; }
  int block_y() const { return run_.block_[1]; }
  int block_z() const { return run_.block_[2]; }
  std::uint16_t* smem() { return run_.smem_.data(); }
  void sync() { run_.yield(warp_, CtaRun<Elem>::kAtBarrier); }
  template <class Fn>
  void for_each_thread(Fn&& f) {
    for (int lane = 0; lane < 32; ++lane) {
      tid_ = 32 * warp_ + lane;
      f(tid_);
    }
    tid_ = -1;
  }
  void cp_async_16(void* dst, const void* src, int src_bytes) { run_.issue(tid_, dst, src, 16, src_bytes); }
  void cp_async_4(void* dst, const void* src, int src_bytes) { run_.issue(tid_, dst, src, 4, src_bytes); }
  void commit() {
    for (int lane = 0; lane < 32; ++lane) run_.commit(32 * warp_ + lane);
  }
  template <int N>
  void wait() {
    for (int lane = 0; lane < 32; ++lane) run_.wait(32 * warp_ + lane, N);
  }

  // WarpHooks: what the warp's instructions touch (lane -1: a warp-collective access).
  void smem_read(const void* p, std::size_t bytes, int lane, const char* what) override {
    run_.read(warp_, lane < 0 ? -1 : 32 * warp_ + lane, p, bytes, what);
  }
  void smem_write(const void* p, std::size_t bytes, int lane, const char* what) override {
    run_.write(warp_, 32 * warp_ + lane, p, bytes, what);
  }
  bool global_write(const void* p, std::size_t bytes, const char* what) override {
    return run_.globals_.write(p, bytes, what, run_.findings_);
  }

 private:
  CtaRun<Elem>& run_;
  int warp_;
  int tid_ = -1;  // the thread of for_each_thread's current call
};

template <class Elem>
class CtaRun {
 public:
  static constexpr int kRunning = 0, kAtBarrier = 1, kDone = 2;

  /// @p smem_bytes of shared memory, poisoned with @p poison (16-bit words).
  CtaRun(std::size_t smem_bytes, std::uint16_t poison, GlobalMap& globals, Findings& findings)
      : smem_(smem_bytes / 2, poison), shadow_(smem_.size()), globals_(globals), findings_(findings) {
    for (int w = 0; w < tc::kWarps; ++w) warps_.emplace_back(smem_.data(), smem_.size());
  }

  /// Runs @p program (called as program(HostCta&)) for block (x, y, z) on kWarps warps.
  void run(int x, int y, int z, const std::function<void(HostCta<Elem>&)>& program) {
    block_ = {x, y, z};
    std::vector<HostCta<Elem>> ctas;
    for (int w = 0; w < tc::kWarps; ++w) ctas.emplace_back(*this, w);
    for (int w = 0; w < tc::kWarps; ++w) warps_[static_cast<std::size_t>(w)].hooks = &ctas[static_cast<std::size_t>(w)];
    std::vector<std::thread> threads;
    for (int w = 0; w < tc::kWarps; ++w) {
      threads.emplace_back([&, w] {
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return turn_ == w; });
        }
        try {
          program(ctas[static_cast<std::size_t>(w)]);
        } catch (const std::exception& e) {
          findings_.add("warp " + std::to_string(w) + " threw: " + e.what());
        }
        for (int lane = 0; lane < 32; ++lane) {
          const int t = 32 * w + lane;
          long in_flight = static_cast<long>(open_[static_cast<std::size_t>(t)].size());
          for (const auto& g : groups_[static_cast<std::size_t>(t)]) in_flight += static_cast<long>(g.size());
          if (in_flight > 0) {
            findings_.add(where() + "thread " + std::to_string(t) + " exits with " + std::to_string(in_flight) +
                          " cp.async copies in flight");
          }
        }
        yield(w, kDone);
      });
    }
    for (auto& t : threads) t.join();
    for (auto& w : warps_) w.hooks = nullptr;
  }

  /// The warps' instruction counters, summed.
  long sum(long HostWarp<Elem>::*counter) const {
    long n = 0;
    for (const auto& w : warps_) n += w.*counter;
    return n;
  }

 private:
  friend class HostCta<Elem>;

  struct Copy {
    std::size_t dst = 0;  // 16-bit word in smem
    const std::byte* src = nullptr;
    int bytes = 0;      // 16 or 4
    int src_bytes = 0;  // bytes or 0 (zero-fill)
  };
  struct Shadow {
    int pending = -1;  // thread whose cp.async to this word is in flight
    int writer = -1;   // thread of the last completed write
    int write_epoch = -1;
    std::array<int, tc::kWarps> read_epoch{-1, -1, -1, -1};
  };

  std::string where() const {
    std::ostringstream os;
    os << "block (" << block_[0] << ", " << block_[1] << ", " << block_[2] << ") epoch " << epoch_ << ": ";
    return os.str();
  }

  // The caller's warp stops (at a barrier, or for good) and the next running warp goes on; when
  // none is left in this round, the barrier releases every warp waiting at it.
  void yield(int w, int state) {
    std::unique_lock<std::mutex> lock(mu_);
    state_[static_cast<std::size_t>(w)] = state;
    int next = -1;
    for (int i = w + 1; i < tc::kWarps && next < 0; ++i) {
      if (state_[static_cast<std::size_t>(i)] == kRunning) next = i;
    }
    if (next < 0) {
      bool waiting = false;
      bool done = false;
      for (auto& s : state_) {
        waiting = waiting || s == kAtBarrier;
        done = done || s == kDone;
      }
      if (waiting && done) {
        findings_.add(where() + "a barrier that not every warp reaches (a warp left the CTA before it)");
      }
      if (waiting) ++epoch_;
      for (int i = 0; i < tc::kWarps; ++i) {
        auto& s = state_[static_cast<std::size_t>(i)];
        if (s == kAtBarrier) s = kRunning;
        if (s == kRunning && next < 0) next = i;
      }
    }
    turn_ = next;
    cv_.notify_all();
    if (state != kDone) cv_.wait(lock, [&] { return turn_ == w; });
  }

  std::size_t word_of(const void* p, std::size_t bytes, const char* what) {
    const auto* q = static_cast<const std::byte*>(p);
    const auto* base = reinterpret_cast<const std::byte*>(smem_.data());
    if (q < base || q + bytes > base + 2 * smem_.size() || (q - base) % 2 != 0) {
      findings_.add(where() + what + ": shared-memory access outside the CTA's allocation");
      return smem_.size();
    }
    return static_cast<std::size_t>(q - base) / 2;
  }

  void read(int warp, int tid, const void* p, std::size_t bytes, const char* what) {
    const std::size_t w0 = word_of(p, bytes, what);
    for (std::size_t x = w0; x < std::min(smem_.size(), w0 + bytes / 2); ++x) {
      Shadow& s = shadow_[x];
      if (s.pending >= 0) {
        race(what, x, "reads a word that thread " + std::to_string(s.pending) + "'s cp.async may still be writing");
      } else if (s.writer < 0) {
        race(what, x, "reads a word nothing wrote in this CTA");
      } else if (s.write_epoch == epoch_ && s.writer != tid) {
        race(what, x, "reads a word thread " + std::to_string(s.writer) + " wrote with no barrier between");
      }
      s.read_epoch[static_cast<std::size_t>(warp)] = epoch_;
    }
  }

  // Checks a write (a store, or a cp.async at issue) by a thread of @p warp.
  void check_write(int warp, std::size_t x, bool async, const char* what) {
    Shadow& s = shadow_[x];
    if (s.pending >= 0) {
      race(what, x, "writes a word thread " + std::to_string(s.pending) + "'s cp.async may still be writing");
    } else if (s.writer >= 0 && s.write_epoch == epoch_ && s.writer / 32 != warp) {
      race(what, x, "writes a word thread " + std::to_string(s.writer) + " wrote with no barrier between");
    }
    for (int r = 0; r < tc::kWarps; ++r) {
      if ((r != warp || async) && s.read_epoch[static_cast<std::size_t>(r)] == epoch_) {
        race(what, x, "overwrites a word warp " + std::to_string(r) + " read with no barrier between");
      }
    }
  }

  void write(int warp, int tid, const void* p, std::size_t bytes, const char* what) {
    const std::size_t w0 = word_of(p, bytes, what);
    for (std::size_t x = w0; x < std::min(smem_.size(), w0 + bytes / 2); ++x) {
      check_write(warp, x, false, what);
      shadow_[x].writer = tid;
      shadow_[x].write_epoch = epoch_;
    }
  }

  void issue(int tid, void* dst, const void* src, int bytes, int src_bytes) {
    const char* what = bytes == 16 ? "cp.async (16 bytes)" : "cp.async (4 bytes)";
    if (tid < 0) {
      findings_.add(where() + what + " issued outside for_each_thread (no thread)");
      return;
    }
    const int warp = tid / 32;
    if (src_bytes != 0 && src_bytes != bytes) findings_.add(where() + what + " with a partial source size");
    if (reinterpret_cast<std::uintptr_t>(dst) % static_cast<std::uintptr_t>(bytes) != 0 ||
        (src_bytes > 0 && reinterpret_cast<std::uintptr_t>(src) % static_cast<std::uintptr_t>(bytes) != 0)) {
      findings_.add(where() + what + ": address not aligned to the copy size");
    }
    if (src_bytes > 0 && !globals_.read(src, static_cast<std::size_t>(src_bytes), what, findings_)) {
      src_bytes = 0;  // reported; the emulation must not read outside the buffers itself
    }
    const std::size_t w0 = word_of(dst, static_cast<std::size_t>(bytes), what);
    if (w0 >= smem_.size()) return;
    for (std::size_t x = w0; x < w0 + static_cast<std::size_t>(bytes) / 2; ++x) {
      check_write(warp, x, true, what);
      shadow_[x].pending = tid;
    }
    open_[static_cast<std::size_t>(tid)].push_back({w0, static_cast<const std::byte*>(src), bytes, src_bytes});
  }

  void commit(int tid) {
    auto& open = open_[static_cast<std::size_t>(tid)];
    groups_[static_cast<std::size_t>(tid)].push_back(std::move(open));
    open.clear();
  }

  // cp.async.wait_group n: every group of the thread but the n newest lands now.
  void wait(int tid, int n) {
    auto& groups = groups_[static_cast<std::size_t>(tid)];
    while (static_cast<int>(groups.size()) > n) {
      for (const Copy& c : groups.front()) {
        auto* dst = reinterpret_cast<std::byte*>(smem_.data() + c.dst);
        if (c.src_bytes > 0) {
          std::memcpy(dst, c.src, static_cast<std::size_t>(c.bytes));
        } else {
          std::memset(dst, 0, static_cast<std::size_t>(c.bytes));
        }
        for (std::size_t x = c.dst; x < c.dst + static_cast<std::size_t>(c.bytes) / 2; ++x) {
          shadow_[x].pending = -1;
          shadow_[x].writer = tid;
          shadow_[x].write_epoch = epoch_;
        }
      }
      groups.erase(groups.begin());
    }
  }

  void race(const char* what, std::size_t word, const std::string& how) {
    findings_.add(where() + what + " at shared word " + std::to_string(word) + " " + how);
  }

  std::vector<std::uint16_t> smem_;
  std::vector<Shadow> shadow_;
  GlobalMap& globals_;
  Findings& findings_;
  std::vector<HostWarp<Elem>> warps_;
  std::array<int, 3> block_{0, 0, 0};

  // Turn-taking: the warp whose turn it is runs, the others wait on cv_.
  std::mutex mu_;
  std::condition_variable cv_;
  int turn_ = 0;
  int epoch_ = 0;
  std::array<int, tc::kWarps> state_{};

  // cp.async state per thread: copies not yet committed, and committed groups in flight.
  std::array<std::vector<Copy>, tc::kThreads> open_;
  std::array<std::vector<std::vector<Copy>>, tc::kThreads> groups_;
};

/// Runs @p program on every block of a (gx, gy, gz) grid, one fresh CtaRun per block (shared memory
/// poisoned with @p poison); adds the warps' counters into @p counters.
struct WarpCounters {
  long mma_calls = 0, ldsm_phases = 0, bank_conflicts = 0, bad_addresses = 0, store_conflicts = 0;
};
template <class Elem>
void run_grid(int gx, int gy, int gz, std::size_t smem_bytes, std::uint16_t poison, GlobalMap& globals,
              Findings& findings, WarpCounters& counters,
              const std::function<void(HostCta<Elem>&)>& program) {
  for (int z = 0; z < gz; ++z) {
    for (int y = 0; y < gy; ++y) {
      for (int x = 0; x < gx; ++x) {
        CtaRun<Elem> cta(smem_bytes, poison, globals, findings);
        cta.run(x, y, z, program);
        using H = HostWarp<Elem>;
        counters.mma_calls += cta.sum(&H::mma_calls);
        counters.ldsm_phases += cta.sum(&H::ldsm_phases);
        counters.bank_conflicts += cta.sum(&H::bank_conflicts);
        counters.bad_addresses += cta.sum(&H::bad_addresses);
        counters.store_conflicts += cta.sum(&H::store_conflicts);
      }
    }
  }
}

}  // namespace ringattn::test

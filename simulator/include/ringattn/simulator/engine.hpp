/// @file engine.hpp
/// @brief The discrete-event core: an event queue ordered by (time, sequence number).
///
/// Events that share a time are delivered in the order they were scheduled, so a simulation is
/// deterministic, and time never goes backwards: scheduling an event before the current time is
/// an error, not a silent reordering. Every event belongs to a resource (a compute stream, a
/// link) that runs one task at a time, so a resource has at most one pending event and the
/// queue's memory is bounded by the number of resources, not by the events simulated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ringattn::sim {

/// One pending event: at `time`, resource `resource` finishes its current task.
struct Event {
  double time = 0;          ///< seconds since the start of the simulation
  std::uint64_t seq = 0;    ///< scheduling order; breaks ties between equal times
  std::uint32_t resource = 0;  ///< index of the resource whose task completes
};

/// Min-queue of events by (time, seq) with at most one pending event per resource: a
/// tournament (winner) tree over the resources.
///
/// Each leaf holds its resource's pending event (or nothing), each inner node the earliest event
/// of its subtree, so the root is the next event. Scheduling rewrites one leaf and replays the
/// matches on its path to the root, stopping where a node keeps its winner: a late event (the
/// usual case: it ends a task that just started) loses within a level or two. Popping leaves
/// the winner's leaf to be replayed by the next call, so the common pop-then-reschedule of the
/// same resource replays its path once. Unlike a heap, the path's addresses do not depend on the
/// keys, so its loads overlap; the order is exactly the (time, seq) order of any other queue.
class EventQueue {
 public:
  /// Largest resource index (24 bits) and number of events a queue can schedule (2^40).
  static constexpr std::uint32_t kMaxResource = (1u << 24) - 1;
  /// A queue for resources 0 .. @p resources - 1; it grows when a larger index is scheduled, so
  /// its memory is O(largest resource index).
  explicit EventQueue(std::uint32_t resources = 0);
  /// Schedules an event for @p resource at @p time; throws ringattn::Error if @p time is before
  /// now() or not finite, @p resource exceeds kMaxResource or already has a pending event.
  void schedule(double time, std::uint32_t resource);
  /// True when no event is pending.
  [[nodiscard]] bool empty() const { return pending_ == 0; }
  /// Removes and returns the earliest event and advances now() to its time.
  Event pop();
  /// Time of the last event popped (0 before the first).
  [[nodiscard]] double now() const { return now_; }
  /// Events popped so far.
  [[nodiscard]] std::uint64_t processed() const { return processed_; }
  /// Events pending.
  [[nodiscard]] std::size_t pending() const { return pending_; }

 private:
  // An event is one 128-bit integer: the bits of the (non-negative) time in the high half, then
  // the sequence number (40 bits) and the resource (24 bits). Non-negative doubles order like
  // their bit patterns, so one unsigned comparison orders by (time, seq), without branches, and
  // the winner carries its resource. All ones (a NaN's bits, never a time) is an empty leaf and
  // loses every match.
  __extension__ using Entry = unsigned __int128;
  static constexpr Entry kEmpty = ~Entry{0};
  static constexpr std::uint32_t kNoHole = ~std::uint32_t{0};

  void grow(std::uint32_t resources);   // leaves for resources 0 .. resources-1 at least
  void replay(std::size_t node);        // re-plays the matches from leaf @p node up, while they change
  void replay_all(std::size_t node);    // re-plays every match from leaf @p node to the root
  void fill_hole();                     // empties and replays the leaf of the last pop

  std::vector<Entry> tree_;      // tree_[1] is the root; the leaves are tree_[leaves_ + r]
  std::size_t leaves_ = 0;       // a power of two (0 before the first event)
  std::uint32_t hole_ = kNoHole;  // resource popped last whose leaf still holds that event
  std::size_t pending_ = 0;
  double now_ = 0;
  std::uint64_t next_seq_ = 0;
  std::uint64_t processed_ = 0;
};

/// A counted pool of buffer slots (e.g. the K/V receive buffers of a device).
class SlotPool {
 public:
  /// A pool of @p capacity slots (>= 1).
  explicit SlotPool(int capacity = 1);
  /// True when a slot is free.
  [[nodiscard]] bool available() const { return used_ < capacity_; }
  /// Takes a slot; throws ringattn::Error if none is free (a logic error of the caller).
  void acquire();
  /// Returns a slot; throws ringattn::Error if none is taken.
  void release();
  [[nodiscard]] int used() const { return used_; }          ///< slots taken now
  [[nodiscard]] int capacity() const { return capacity_; }  ///< slots in the pool
  [[nodiscard]] int peak() const { return peak_; }          ///< most slots ever taken at once

 private:
  int capacity_;
  int used_ = 0;
  int peak_ = 0;
};

}  // namespace ringattn::sim

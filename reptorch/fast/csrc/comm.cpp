// Meetings of the fast kernels' worker threads, as TorchScript-callable ops (reptorch.fast.comm).
//
// The Python meetings (a call from TorchScript back into Python, the GIL, a threading.Barrier)
// cost tens of microseconds each; a step of the image-split chain holds about a dozen. Here a
// meeting is a sense-reversing barrier on atomics: a waiting worker spins briefly (the other is
// normally a few microseconds away), then yields its core, so a worker whose partner was
// preempted by another process gives that process the core instead of burning it.
// allreduce sums every worker's tensor in rank order, so all of them get bitwise the same sum.

#include <torch/library.h>
#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define REPTORCH_PAUSE() _mm_pause()
#else
#define REPTORCH_PAUSE() std::this_thread::yield()
#endif

namespace {

struct Group {
  explicit Group(int64_t size)
      : size(size),
        slots{std::vector<at::Tensor>(size), std::vector<at::Tensor>(size)},
        turn(size, 0) {}
  const int64_t size;
  std::atomic<int64_t> waiting{0};
  std::atomic<int64_t> generation{0};
  std::atomic<bool> aborted{false};
  std::vector<at::Tensor> slots[2];  // used alternately: see allreduce
  std::vector<int> turn;

  void wait() {
    const int64_t gen = generation.load(std::memory_order_acquire);
    if (waiting.fetch_add(1, std::memory_order_acq_rel) + 1 == size) {
      waiting.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    int spins = 0;
    while (generation.load(std::memory_order_acquire) == gen) {
      if (aborted.load(std::memory_order_relaxed)) {
        throw std::runtime_error("reptorch.fast.comm: a worker of this group failed");
      }
      if (++spins < 200) {
        REPTORCH_PAUSE();
      } else {
        std::this_thread::yield();
      }
    }
  }
};

std::mutex registry_lock;
std::unordered_map<int64_t, std::shared_ptr<Group>> registry;
int64_t next_id = 0;

std::shared_ptr<Group> find(int64_t id) {
  std::lock_guard<std::mutex> guard(registry_lock);
  auto it = registry.find(id);
  if (it == registry.end()) throw std::runtime_error("reptorch.fast.comm: no such group");
  return it->second;
}

int64_t open_group(int64_t size) {
  std::lock_guard<std::mutex> guard(registry_lock);
  int64_t id = next_id++;
  registry[id] = std::make_shared<Group>(size);
  return id;
}

void close_group(int64_t id) {
  std::lock_guard<std::mutex> guard(registry_lock);
  registry.erase(id);
}

void abort_group(int64_t id) { find(id)->aborted.store(true); }

void barrier(int64_t id) { find(id)->wait(); }

at::Tensor allreduce(int64_t id, int64_t rank, const at::Tensor& value) {
  auto group = find(id);
  // A worker writes slot set g again only after the next meeting, which every worker reaches
  // only after it has read set g.
  auto& slots = group->slots[group->turn[rank]];
  group->turn[rank] ^= 1;
  slots[rank] = value;
  group->wait();
  at::Tensor total = slots[0].clone();
  for (int64_t r = 1; r < group->size; ++r) total.add_(slots[r]);
  return total;
}

}  // namespace

// Every op is a meeting or changes the registry: CONSERVATIVE alias analysis tells TorchScript
// they have side effects, so it never drops a barrier (no outputs) or merges two allreduces.
TORCH_LIBRARY(reptorch_comm, m) {
  const auto conservative = c10::AliasAnalysisKind::CONSERVATIVE;
  m.def(torch::schema("open(int size) -> int", conservative), &open_group);
  m.def(torch::schema("close(int group) -> ()", conservative), &close_group);
  m.def(torch::schema("abort(int group) -> ()", conservative), &abort_group);
  m.def(torch::schema("barrier(int group) -> ()", conservative), &barrier);
  m.def(torch::schema("allreduce(int group, int rank, Tensor value) -> Tensor", conservative),
        &allreduce);
}

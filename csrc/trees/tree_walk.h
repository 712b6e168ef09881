// One tree walk per (row, tree) over the GPU layouts of the forest, shared by the CUDA kernel
// (csrc/cuda/tree_cuda.cu) and its host twin (tree_walk_op.cpp, which tests the decoding on machines
// without a GPU). Torch-free; every function compiles for host and device.
//
// Note [GPU layouts]
// Five layouts (pyzero/trees/gpu_layout.py builds them; `format` below):
//   kPerfect: Note [Perfect trees] (tree_fast.h) in 8-byte nodes: [trees, stride] of (row slot, float32
//     threshold bits) in heap order, a fixed D steps, every node `slot value <= t` (Note [Row slots]) on
//     columns prepared by column_kind. A walk ends at a leaf slot j; its value row is t * 2^D + j and
//     its IR id leaf_nodes[t * 2^D + j].
//   kPerfectBlocked: the same nodes in blocks of two levels: a node and its two children in one 32-byte
//     block (the 4th slot unused), so every second step of a walk reads the sector the step before
//     brought in. Levels 2g and 2g + 1 form group g: 4^g blocks, the block of in-level index b at
//     4 * (4^g - 1) / 3 + 4 * b (blocked_slot).
//   kCompact: 8-byte nodes, each tree laid out breadth-first or depth-first with the two children of a
//     node side by side: word0 = feature (bits 0..12) | default_left (13) | cmp_lt (14) | missing kind
//     (15..16) | categorical (17) | child offset (18..31; 0 at a leaf), children at pos + offset and
//     pos + offset + 1; word1 = the float32 threshold bits, a categorical node's cat_bits row, or at a
//     leaf its IR node id. Used when every feature < 2^13 and every child offset < 2^14.
//   kWide: the 16-byte nodes of the C++ node kernel (tree_cpu.h) in IR order; a leaf points to itself.
//   kPerfectTiled: kPerfect's nodes for tiles of kTiledTrees trees, interleaved: nodes [tiles, 2^D,
//     kTiledTrees] (node h of tree 32 * tile + l at [tile, h, l]; row 2^D - 1 and absent trees zero) and
//     one output's values [tiles, 2^D, kTiledTrees] alike, so a value row is (tile * 2^D + j) * 32 + l;
//     leaf_nodes as kPerfect's. 32 lanes walking 32 consecutive trees read consecutive words (Note
//     [Tiled walk] in csrc/cuda/tree_launch.h copies a tile into shared memory with plain loads).
// Numeric, missing-value and categorical rules are the C++ node kernel's (tree_cpu.h flags, Note
// [Categorical splits] in pyzero/trees/forest.py), so all layouts give the same leaf for every row.
// A walk returns the leaf's value row: values[row * n_outputs + o] is what it adds to output o.
//
// Note [Row slots]
// ~~~~~~~~~~~~~~~~
// A perfect-layout node compares one *slot* of its row, not a feature, so that a visit is a node load,
// a row load and one compare: no NaN test and no default-left bit. Slot s = k * n_features + c holds
// feature c (as prepare_value reads it) in copy k of the row:
//   k = 0: the value as it is: a NaN goes right (no NaN is <= t);
//   k = 1: a NaN read as -inf: it goes left (-inf <= t for every t but a NaN);
//   k = 2: 0 for a NaN, 1 for a number: with threshold 0.5, left iff NaN.
// gpu_layout.py gives every node the copy that makes `v <= t` its whole rule `isnan(x) ? default_left :
// x <= t` (Note [Perfect trees]): copy 0 unless the node is default-left on a column that can hold a
// NaN after prepare_value, then copy 1, or copy 2 when its threshold is NaN (CMP_LT at -inf: left iff
// NaN, which copy 1 cannot tell from a real -inf). The layout's `copies` (1 to 3: its largest copy plus
// one) sets the slots of a row, copies * n_features; staged rows hold all of them, unstaged reads
// compute the one they need (slot_value). Node layouts read copy 0 (copies = 1).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "hd.h"
#include "libm_exp.h"
#include "tree_cpu.h"
#include "tree_fast.h"

namespace pyzero::trees {

enum WalkFormat : int32_t { kPerfect = 0, kCompact = 1, kWide = 2, kPerfectBlocked = 3, kPerfectTiled = 4 };

PYZERO_HD constexpr bool is_perfect_format(int32_t format) {
  return format == kPerfect || format == kPerfectBlocked || format == kPerfectTiled;
}

// Perfect layouts whose trees lie one after another (tree_chunk > 0 copies them as they are).
PYZERO_HD constexpr bool is_chunkable_format(int32_t format) {
  return format == kPerfect || format == kPerfectBlocked;
}

// kPerfectTiled: trees per tile.
constexpr int kTiledTrees = 32;

// kPerfectBlocked: the slot of heap node h (at level d) in its tree (Note [GPU layouts]).
PYZERO_HD int32_t blocked_slot(int32_t d, int32_t h) {
  const int32_t j = h - ((int32_t{1} << d) - 1);  // index within the level
  const int32_t g = d >> 1, ld = d & 1;           // group, level within the block
  const int32_t group_start = ((int32_t{1} << (2 * g)) - 1) / 3 * 4;
  return group_start + ((j >> ld) << 2) + ((int32_t{1} << ld) - 1) + (j & ((int32_t{1} << ld) - 1));
}

// Slots of a blocked perfect tree of depth D (the node stride it needs).
PYZERO_HD int64_t blocked_slots(int32_t depth) {
  const int32_t groups = (depth + 1) / 2;
  return ((int64_t{1} << (2 * groups)) - 1) / 3 * 4;
}

constexpr uint32_t kC8FeatureMask = (1u << 13) - 1;
constexpr uint32_t kC8DefaultLeft = 1u << 13;
constexpr uint32_t kC8CmpLt = 1u << 14;
constexpr int kC8MissingShift = 15;
constexpr uint32_t kC8Categorical = 1u << 17;
constexpr int kC8OffsetShift = 18;

// Note [Fused finish]
// What a walk may do to a row's sums before it writes them, so small GPU batches need no further
// launches: the same steps, precision and order as the torch post-transforms in
// pyzero/trees/compiled.py. First the mean of the trees when divisor > 0 (the sums start from 0, then
// s / divisor + base), then sigmoid(scale * s) = 1 / (1 + exp(-scale * s)) or exp(s), in float32 when
// the forest sums in float32 (its library transforms in float32 too) else in double; `pair` writes a
// single output as the binary class probabilities [1 - p, p] (1 - p in float32 too when the forest sums
// in float32: XGBoost's predict_proba subtracts from its float32 p). The cpu backend applies the same steps
// to its kernels' sums (finish_sums in tree_walk_plan.h, which also writes XGBoost's and LightGBM's softmax):
// with the host's expf and exp, which the native libraries call too, its probabilities equal theirs bit for
// bit (where torch's vectorized sigmoid differed in the last bit on 1-2% of the values), and a binary
// predict_proba at batch 1 drops four torch calls (XGBoost 500 trees of depth 12: 22.4 -> 17.1 us). On a
// GPU, finish_sums writes the softmax (softmax_row) in one launch after the kernel. The device calls
// glibc's expf and exp repeated in libm_exp.h (Note [Library exp]), not CUDA's; the Triton twin the same
// steps in pyzero/kernels/libm_triton.py.
enum FinishKind : int32_t { kFinishRaw = 0, kFinishSigmoid = 1, kFinishExp = 2 };

struct Finish {
  int32_t kind = kFinishRaw;
  double scale = 1.0;    // sigmoid: multiplies the score first (LightGBM's sigmoid:k)
  double divisor = 0.0;  // > 0: the mean of the trees
  bool pair = false;
};

struct WalkForest {
  int32_t format;
  const uint32_t* nodes;      // perfect: [trees, stride, 2]; compact: [n, 2]; wide: Node [n]
  const int32_t* roots;       // compact / wide: root position of each tree
  const int32_t* leaf_nodes;  // perfect: [trees * 2^D] IR ids of the leaf slots
  const double* values;       // [value rows, n_outputs], or nullptr when values32 holds them
  const float* values32;      // the same as float32 (forests that sum in float32: half the bytes)
  const double* threshold64;  // compact / wide: per node position, compared with float64 inputs
  const uint32_t* cat_bits;   // [sets, cat_words]
  const int8_t* column_kind;  // [n_features] or nullptr (prepare_value)
  int64_t cat_words;
  double cat_lo, cat_hi;
  int32_t cat_invalid;
  int64_t n_trees, n_outputs, n_features;
  int32_t copies = 1;   // copies of each row feature (Note [Row slots]): row slots = copies * n_features
  int64_t node_stride;  // perfect
  int32_t depth;        // perfect: D
  Finish finish;        // of this call (Note [Fused finish])
};

// Two words of a compact node (8-byte aligned: one load on the GPU).
struct alignas(8) Node8 {
  uint32_t word0, word1;
};

// Two nodes in one 16-byte load (a kPerfectBlocked block is two of them).
struct alignas(16) NodePair {
  Node8 first, second;
};

template <typename T>
PYZERO_HD bool is_nan(T v) {
  return v != v;
}
template <typename T>
PYZERO_HD T abs_of(T v) {
  return v < 0 ? -v : v;  // -0.0 stays -0.0 and NaN stays NaN: both compare as fabs's result would
}

PYZERO_HD float bits_to_float(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

// Feature c's value v as the kernels read it: column_kind's LightGBM reading (|v| <= 1e-35f -> 0,
// +-inf -> +-FLT_MAX) for every layout, and for the perfect layout its missing-value transforms (Note
// [Perfect trees]). Node layouts apply missing kinds in their nodes instead.
template <typename T>
PYZERO_HD T prepare_value(const WalkForest& f, T v, int64_t c) {
  if (f.column_kind == nullptr) return v;
  const int8_t kind = f.column_kind[c];
  if (kind & kColumnLightgbmReading) {
    constexpr T kMax = static_cast<T>(3.4028234663852886e38);
    v = abs_of(v) <= static_cast<T>(kFastZeroThreshold) ? T(0) : v;
    v = v > kMax ? kMax : (v < -kMax ? -kMax : v);
  }
  if (!is_perfect_format(f.format)) return v;
  const int8_t missing = kind & kColumnMissingMask;
  if (missing == kColumnNanToZero && is_nan(v)) return T(0);
  if (missing == kColumnZeroToNan && (is_nan(v) || abs_of(v) <= static_cast<T>(kFastZeroThreshold)))
    return static_cast<T>(bits_to_float(0x7fc00000u));
  return v;
}

// Note [Row slots]: the values per row, and the value of slot k * n_features + c for a prepared
// value v of feature c.
PYZERO_HD int64_t row_slots(const WalkForest& f) {
  return f.copies * f.n_features;
}

template <typename T>
PYZERO_HD T slot_of(T v, int64_t k) {
  if (k == 0) return v;
  if (k == 1) return is_nan(v) ? static_cast<T>(bits_to_float(0xff800000u)) : v;  // -inf
  return is_nan(v) ? T(0) : T(1);
}

// Slot s of the row at x (n_features values as given, not prepared).
template <typename T>
PYZERO_HD T slot_value(const WalkForest& f, const T* x, int64_t s) {
  const int64_t k = static_cast<int64_t>(s >= f.n_features) + static_cast<int64_t>(s >= 2 * f.n_features);
  const int64_t c = s - k * f.n_features;
  return slot_of(prepare_value(f, x[c], c), k);
}

// Whether a node with the given decoded fields sends v left (tree_cpu.h's rule).
template <typename T>
PYZERO_HD bool node_left(const WalkForest& f, bool default_left, bool cmp_lt, int missing_kind,
                         bool categorical, uint32_t word, int64_t pos, T v) {
  bool nan = is_nan(v);
  if (nan && missing_kind == 1) {
    v = 0;
    nan = false;
  }
  const bool missing = missing_kind == 2 ? (nan || abs_of(v) <= static_cast<T>(kZeroThreshold)) : nan;
  if (missing) return default_left;
  if (categorical) {
    if (!(v >= static_cast<T>(f.cat_lo) && v < static_cast<T>(f.cat_hi))) {
      return f.cat_invalid == kInvalidDefault ? default_left : f.cat_invalid == kInvalidLeft;
    }
    const int64_t c = static_cast<int64_t>(v);  // truncation toward zero; v is in the domain
    const bool in_set = (c >> 5) < f.cat_words &&
                        ((f.cat_bits[static_cast<int64_t>(word) * f.cat_words + (c >> 5)] >> (c & 31)) & 1u);
    return in_set != cmp_lt;
  }
  const T t = sizeof(T) == 8 ? static_cast<T>(f.threshold64[pos]) : static_cast<T>(bits_to_float(word));
  return cmp_lt ? v < t : v <= t;
}

// Leaf value i (float32 values come back exactly as the float32 the sum would round the double to).
PYZERO_HD double leaf_value(const WalkForest& f, int64_t i) {
  return f.values32 != nullptr ? static_cast<double>(f.values32[i]) : f.values[i];
}

// Note [Fused finish]: the starting value of a sum, and the value written for output o (sum s).
PYZERO_HD double sum_start(const WalkForest& f, bool acc32, double base) {
  if (f.finish.divisor > 0) return 0.0;
  return acc32 ? static_cast<double>(static_cast<float>(base)) : base;
}

PYZERO_HD double finish_value(const WalkForest& f, bool acc32, double s, double base) {
  const Finish& fin = f.finish;
  if (fin.divisor > 0) s = s / fin.divisor + base;
  if (fin.kind == kFinishRaw) return s;
  if (acc32) {
    float v = static_cast<float>(s);
    if (fin.scale != 1.0) v = v * static_cast<float>(fin.scale);
    return static_cast<double>(fin.kind == kFinishSigmoid ? 1.0f / (1.0f + libm::lib_expf(-v))
                                                          : libm::lib_expf(v));
  }
  const double v = fin.scale != 1.0 ? s * fin.scale : s;
  return fin.kind == kFinishSigmoid ? 1.0 / (1.0 + libm::lib_exp(-v)) : libm::lib_exp(v);
}

// Writes output o of row r: out is [rows, 2] when the finish writes pairs, else [rows, n_outputs].
PYZERO_HD void store_output(const WalkForest& f, bool acc32, const double* base, double* out, int64_t r,
                            int64_t o, double s) {
  const double v = finish_value(f, acc32, s, base[o]);
  if (f.finish.pair) {  // P(class 0) in the library's precision, as XGBoost's float32 1 - p
    out[r * 2] = acc32 ? static_cast<double>(1.0f - static_cast<float>(v)) : 1.0 - v;
    out[r * 2 + 1] = v;
  } else {
    out[r * f.n_outputs + o] = v;
  }
}

// Note [Fused finish]'s softmax of one row's n sums s into out, as the libraries write it: in float32
// with a double sum when the forest sums in float32 (XGBoost's Softmax), else in double (LightGBM's
// Common::Softmax); finish_sums applies it on the host and on the device.
PYZERO_HD void softmax_row(const double* s, int64_t n, bool acc32, double* out) {
  if (acc32) {
    float wmax = static_cast<float>(s[0]);
    for (int64_t k = 1; k < n; ++k) wmax = fmaxf(static_cast<float>(s[k]), wmax);
    double wsum = 0.0;
    for (int64_t k = 0; k < n; ++k) {
      const float e = libm::lib_expf(static_cast<float>(s[k]) - wmax);
      out[k] = e;
      wsum += e;
    }
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<float>(out[k]) / static_cast<float>(wsum);
    return;
  }
  double wmax = s[0];
  for (int64_t k = 1; k < n; ++k) wmax = s[k] < wmax ? wmax : s[k];  // std::max(s[k], wmax)
  double wsum = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    out[k] = libm::lib_exp(s[k] - wmax);
    wsum += out[k];
  }
  for (int64_t k = 0; k < n; ++k) out[k] /= wsum;
}

// The softmax of one row's n sums s into out after the trees' mean (s / divisor + base) when divisor > 0
// (LightGBM's multiclass rf); out may be s.
PYZERO_HD void softmax_sums(const double* s, const double* base, double divisor, int64_t n, bool acc32,
                            double* out) {
  if (divisor > 0) {
    for (int64_t k = 0; k < n; ++k) out[k] = s[k] / divisor + base[k];
    s = out;
  }
  softmax_row(s, n, acc32, out);
}

// One step of a perfect-tree walk (Note [Perfect trees]): the heap index of node i's child that row
// goes to, node nd being (row slot, threshold bits) (Note [Row slots]); `last` caps the slot
// (row_slots - 1), so no node reads outside its row.
template <typename Row>
PYZERO_HD bool perfect_right(Node8 nd, const Row& row, uint32_t last) {
  const float v = row(static_cast<int32_t>(nd.word0 < last ? nd.word0 : last));
  return !(v <= bits_to_float(nd.word1));
}

template <typename Row>
PYZERO_HD int32_t perfect_child(Node8 nd, const Row& row, uint32_t last, int32_t i) {
  return 2 * i + 1 + static_cast<int32_t>(perfect_right(nd, row, last));
}

// The walker of one layout. walk<N>(t0, count, row, out) walks trees t0 .. t0 + count - 1 (count <= N)
// in lockstep, so one thread has N independent node loads in flight, and writes each tree's leaf value
// row to out[k]; leaf_id(value row) is the leaf's IR node id. `row(c)` reads feature c of the row, or
// for the perfect layouts slot c (Note [Row slots]).
template <bool kBlocked>
struct PerfectWalkerT {
  const WalkForest& f;
  template <int N, typename Row>
  PYZERO_HD void walk(int64_t t0, int64_t count, const Row& row, int64_t* out) const {
    // node slot of tree k's root: 32-bit (tree_walk_op.cpp checks the slot count), one register a tree
    const Node8* nodes = reinterpret_cast<const Node8*>(f.nodes);
    int32_t root[N], i[N];
    NodePair block[kBlocked ? N : 1][2];
    PYZERO_UNROLL
    for (int k = 0; k < N; ++k) {
      i[k] = 0;
      root[k] = static_cast<int32_t>((t0 + (k < count ? k : 0)) * f.node_stride);
    }
    const auto last = static_cast<uint32_t>(row_slots(f) - 1);
    for (int32_t d = 0; d < f.depth; ++d) {
      PYZERO_UNROLL
      for (int k = 0; k < N; ++k) {
        Node8 nd;
        if constexpr (kBlocked) {  // a block's three nodes in one 32-byte read every second level
          if ((d & 1) == 0) {
            const auto* half = reinterpret_cast<const NodePair*>(nodes + (root[k] + blocked_slot(d, i[k])));
            block[k][0] = half[0];
            block[k][1] = half[1];
            nd = block[k][0].first;
          } else {
            nd = (i[k] & 1) ? block[k][0].second : block[k][1].first;  // left child 2p + 1 is odd
          }
          i[k] = perfect_child(nd, row, last, i[k]);
        } else {
          // heap order: the walk keeps node slot p = root + i, whose child slot is 2p + 1 - root (+ 1
          // right), in wrapping 32-bit arithmetic: one add to address the node, none to step
          const uint32_t p = static_cast<uint32_t>(root[k]) + static_cast<uint32_t>(i[k]);
          const uint32_t child = 2 * p + (1u - static_cast<uint32_t>(root[k])) +
                                 static_cast<uint32_t>(perfect_right(nodes[p], row, last));
          i[k] = static_cast<int32_t>(child - static_cast<uint32_t>(root[k]));
        }
      }
    }
    const int32_t first_leaf = (int32_t{1} << f.depth) - 1;
    PYZERO_UNROLL
    for (int k = 0; k < N; ++k) out[k] = ((t0 + k) << f.depth) + (i[k] - first_leaf);
  }
  PYZERO_HD int32_t leaf_id(int64_t value_row) const { return f.leaf_nodes[value_row]; }
};
using PerfectWalker = PerfectWalkerT<false>;
using PerfectBlockedWalker = PerfectWalkerT<true>;

// kPerfectTiled (Note [GPU layouts]): value rows (tile * 2^D + j) * 32 + l.
struct TiledWalker {
  const WalkForest& f;
  template <int N, typename Row>
  PYZERO_HD void walk(int64_t t0, int64_t count, const Row& row, int64_t* out) const {
    const Node8* tile[N];
    int32_t i[N], l[N];
    const int64_t tile_nodes = (int64_t{1} << f.depth) * kTiledTrees;
    PYZERO_UNROLL
    for (int k = 0; k < N; ++k) {
      const int64_t t = t0 + (k < count ? k : 0);
      i[k] = 0;
      l[k] = static_cast<int32_t>(t % kTiledTrees);
      tile[k] = reinterpret_cast<const Node8*>(f.nodes) + t / kTiledTrees * tile_nodes;
    }
    const auto last = static_cast<uint32_t>(row_slots(f) - 1);
    for (int32_t d = 0; d < f.depth; ++d) {
      PYZERO_UNROLL
      for (int k = 0; k < N; ++k) {
        i[k] = perfect_child(tile[k][i[k] * kTiledTrees + l[k]], row, last, i[k]);
      }
    }
    const int32_t first_leaf = (int32_t{1} << f.depth) - 1;
    PYZERO_UNROLL
    for (int k = 0; k < N; ++k) {
      const int64_t tile_index = (t0 + k) / kTiledTrees;
      out[k] = ((tile_index << f.depth) + (i[k] - first_leaf)) * kTiledTrees + l[k];
    }
  }
  PYZERO_HD int32_t leaf_id(int64_t value_row) const {
    const int64_t l = value_row % kTiledTrees, q = value_row / kTiledTrees;
    const int64_t j = q & ((int64_t{1} << f.depth) - 1), tile = q >> f.depth;
    return f.leaf_nodes[((tile * kTiledTrees + l) << f.depth) + j];
  }
};

// Shared lockstep loop of the node layouts: step(pos) returns true at a leaf (its value row in *res).
// Positions fit 32 bits (tree_walk_op.cpp checks the node count).
template <int N, typename Step>
PYZERO_HD void walk_nodes(const WalkForest& f, int64_t t0, int64_t count, int64_t* out, const Step& step) {
  int32_t pos[N];
  bool done[N];
  PYZERO_UNROLL
  for (int k = 0; k < N; ++k) {
    done[k] = k >= count;
    pos[k] = done[k] ? 0 : f.roots[t0 + k];
  }
  for (;;) {
    bool busy = false;
    PYZERO_UNROLL
    for (int k = 0; k < N; ++k) {
      if (!done[k]) {
        done[k] = step(pos[k], &out[k]);
        busy = true;
      }
    }
    if (!busy) return;
  }
}

// One decoded node of a node layout: a leaf (its value row), or a split's fields and children.
struct NodeFields {
  bool leaf;
  int64_t leaf_row;
  int32_t left, right;  // positions of the children
  uint32_t feature, word;
  bool default_left, cmp_lt, categorical;
  int missing_kind;
};

struct CompactDecode {  // Note [GPU layouts]: kCompact
  const WalkForest& f;
  PYZERO_HD NodeFields operator()(int32_t pos) const {
    const Node8 nd = reinterpret_cast<const Node8*>(f.nodes)[pos];
    const int32_t left = pos + static_cast<int32_t>(nd.word0 >> kC8OffsetShift);
    return NodeFields{left == pos,
                      nd.word1,
                      left,
                      left + 1,
                      nd.word0 & kC8FeatureMask,
                      nd.word1,
                      (nd.word0 & kC8DefaultLeft) != 0,
                      (nd.word0 & kC8CmpLt) != 0,
                      (nd.word0 & kC8Categorical) != 0,
                      static_cast<int>((nd.word0 >> kC8MissingShift) & 3)};
  }
};

struct WideDecode {  // Note [GPU layouts]: kWide, the C++ node kernel's Node
  const WalkForest& f;
  PYZERO_HD NodeFields operator()(int32_t pos) const {
    const Node nd = reinterpret_cast<const Node*>(f.nodes)[pos];
    uint32_t word;
    memcpy(&word, &nd.threshold, sizeof word);
    return NodeFields{nd.left == pos && nd.right == pos,
                      pos,
                      nd.left,
                      nd.right,
                      static_cast<uint32_t>(nd.meta & kFeatureMask),
                      word,
                      (nd.meta & kDefaultLeft) != 0,
                      (nd.meta & kCmpLt) != 0,
                      (nd.meta & kCategorical) != 0,
                      (nd.meta >> kMissingShift) & 3};
  }
};

// The walker of a node layout: decode, then tree_cpu.h's rule, until a leaf.
template <typename Decode>
struct NodeWalker {
  const WalkForest& f;
  template <int N, typename Row>
  PYZERO_HD void walk(int64_t t0, int64_t count, const Row& row, int64_t* out) const {
    const Decode decode{f};
    walk_nodes<N>(f, t0, count, out, [&](int32_t& pos, int64_t* res) {
      const NodeFields nd = decode(pos);
      if (nd.leaf) {
        *res = nd.leaf_row;
        return true;
      }
      const bool left = node_left(f, nd.default_left, nd.cmp_lt, nd.missing_kind, nd.categorical, nd.word,
                                  pos, row(static_cast<int64_t>(nd.feature)));
      pos = left ? nd.left : nd.right;
      return false;
    });
  }
  PYZERO_HD int32_t leaf_id(int64_t value_row) const { return static_cast<int32_t>(value_row); }
};

using CompactWalker = NodeWalker<CompactDecode>;
using WideWalker = NodeWalker<WideDecode>;

// Host twin of the CUDA kernel: row by row, trees in order (the same sums, Note [Perfect trees]).
// raw: [rows, n_outputs] or nullptr; leaves: [rows, n_trees] or nullptr.
template <typename T>
void walk_host(const WalkForest& f, const T* x, int64_t rows, const double* base, bool float32_accum,
               double* raw, int32_t* leaves);

}  // namespace pyzero::trees

// How a tensor sees its storage: what rebuilding it on other memory needs.
// A queued Work's argument in a future's memory (SlotArgument), a backward
// segment's tensor argument (SegmentArgument) and a leaf's new gradient in a
// replayed segment all keep one, taken from a program tensor (Of) and
// rebuilt on the executor's memory (On).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/util/SmallVector.h>

#include <cstdint>

namespace terra::runtime {

struct TensorLayout {
  c10::SmallVector<int64_t, 5> sizes;
  c10::SmallVector<int64_t, 5> strides;
  int64_t offset = 0;
  c10::DispatchKeySet keys;  // without autograd's: the executor runs below autograd
  caffe2::TypeMeta dtype;
  // A Python number the op took as a tensor: type promotion treats it as a
  // scalar (a 0-dim float32 gradient times 0.5 stays float32), so a rebuilt
  // one must be marked too.
  bool wrapped_number = false;

  static TensorLayout Of(const at::Tensor& t);
  void Assign(const at::Tensor& t);  // becomes t's layout, in place
  // A new tensor with this layout on `storage`, `shift` elements further
  // (defined in executor.cc).
  at::Tensor On(c10::Storage storage, int64_t shift = 0) const;
};

}  // namespace terra::runtime

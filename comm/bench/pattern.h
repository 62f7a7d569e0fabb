// The benchmark's data and its exact expected results.
//
// Every input element is a small non-negative integer, chosen so that the sum
// over all ranks is still an integer the DataType represents exactly (float16
// up to 2048, bfloat16 up to 256, int8 up to 127, ...). Sums, maxima and
// minima are then exact in every type whatever order the backend adds in, and
// avg rounds once, as communicator.h's contract says; so a result element is
// either bit-for-bit the expected value or wrong.
#pragma once

#include <cstddef>

#include "comm/types.h"

namespace terra::comm::bench {

class DataPattern {
 public:
  DataPattern(DataType dtype, int world_size);

  DataType dtype() const { return dtype_; }

  // Element `index` of `rank`'s input: an integer in [0, modulus).
  double Input(int rank, size_t index) const;

  // Element `index` of the reduction by `op` of every rank's Input, rounded
  // as the Communicator contract rounds (types.h: kAvg).
  double Reduced(ReduceOp op, size_t index) const;

  // A value no input takes: written into result buffers before a collective,
  // so an element the collective fails to write is counted wrong.
  double poison() const { return static_cast<double>(modulus_); }

  // data[i] = Input(rank, first_index + i) for i < count.
  void FillInput(void* data, size_t count, size_t first_index, int rank) const;
  void FillPoison(void* data, size_t count) const;

 private:
  DataType dtype_;
  int world_size_;
  int modulus_;
};

// Element i of an array of `dtype`, as a double (exact for our values).
double LoadElement(const void* data, DataType dtype, size_t i);
void StoreElement(void* data, DataType dtype, size_t i, double value);
// `value` stored in `dtype` and read back: what a buffer of that type holds.
double RoundTo(DataType dtype, double value);

}  // namespace terra::comm::bench

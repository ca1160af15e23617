// Process-wide LibTorch settings. Debian's LibTorch reports one thread unless told otherwise, and
// several ranks on one machine must split its cores, so the count is always set explicitly.
#pragma once

namespace saegrid {

// Sets LibTorch's intra-op thread count (0: every core of this machine); returns the count used.
int ConfigureThreads(int num_threads);

}  // namespace saegrid

// Early return on a failed absl::Status, shared by the engine and the spec layer.
#pragma once

#include "absl/status/status.h"

#define SAEGRID_RETURN_IF_ERROR(expr)  \
  do {                                 \
    const absl::Status _st = (expr);   \
    if (!_st.ok()) return _st;         \
  } while (0)

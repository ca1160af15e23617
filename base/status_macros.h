// Early returns on a failed absl::Status / absl::StatusOr, shared by every library.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SAEGRID_RETURN_IF_ERROR(expr)  \
  do {                                 \
    const absl::Status _st = (expr);   \
    if (!_st.ok()) return _st;         \
  } while (0)

// SAEGRID_ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>) once; on error
// returns its status, else moves the value into `lhs` ("auto x", "T x" or an existing variable).
#define SAEGRID_ASSIGN_OR_RETURN(lhs, expr) \
  SAEGRID_ASSIGN_OR_RETURN_IMPL_(SAEGRID_STATUS_CONCAT_(_statusor_, __LINE__), lhs, expr)

#define SAEGRID_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = *std::move(statusor)

#define SAEGRID_STATUS_CONCAT_(a, b) SAEGRID_STATUS_CONCAT_INNER_(a, b)
#define SAEGRID_STATUS_CONCAT_INNER_(a, b) a##b

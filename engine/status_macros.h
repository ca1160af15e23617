// Moved to base/status_macros.h; kept for the includes not yet switched (spec/train_config.cc, engine/trainer.cc).
#pragma once
#include "base/status_macros.h"  // IWYU pragma: export

// The constructors of the architectures, one per file; MakeActivationFunction picks one.
#pragma once

#include <memory>

#include "engine/activation/activation_function.h"

namespace saegrid {

std::unique_ptr<ActivationFunction> MakeTopK(const ModelConfig& config);
std::unique_ptr<ActivationFunction> MakeBatchTopK(const ModelConfig& config);
std::unique_ptr<ActivationFunction> MakeJumpReLU(const ModelConfig& config);
std::unique_ptr<ActivationFunction> MakeMatryoshka(const ModelConfig& config);
std::unique_ptr<ActivationFunction> MakeReLU(const ModelConfig& config);

}  // namespace saegrid

// `saegrid eval` (run by saegrid-train, which links the engine): the papers' evaluations of one
// checkpoint (engine/eval/suite.h), with the job specification that trained it (its data and
// evaluation sections), a progress line per evaluation, evaluations.json, the top-activating
// examples, and PNG figures (cli/plots.h).
#pragma once

namespace saegrid::cli {

// `argv` are the arguments after "eval". Returns 0 when every evaluation ran, 2 for bad usage,
// config or checkpoint, 1 when an evaluation failed.
int RunEvalCommand(int argc, char** argv);

}  // namespace saegrid::cli

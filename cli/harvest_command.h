// `saegrid harvest` (run by saegrid-train, which links the engine): caches a language model's
// activations at one hookpoint as shards with a manifest that data.path reads, from the same job
// specification training uses (its data.language_model section).
#pragma once

namespace saegrid::cli {

// `argv` are the arguments after "harvest". Returns 0 when every shard is written, 2 for bad
// usage or config, 1 when the harvest failed (a kill or a failure resumes where it stopped).
int RunHarvestCommand(int argc, char** argv);

}  // namespace saegrid::cli

// The service commands of the `saegrid` client: submit, get, list, watch, cancel, download,
// results. Each takes the arguments after its name and returns the process exit code.
#pragma once

namespace saegrid::cli {

int RunSubmitCommand(int argc, char** argv);
int RunGetCommand(int argc, char** argv);
int RunListCommand(int argc, char** argv);
int RunWatchCommand(int argc, char** argv);
int RunCancelCommand(int argc, char** argv);
int RunDownloadCommand(int argc, char** argv);
int RunResultsCommand(int argc, char** argv);

}  // namespace saegrid::cli

#include "coordinator/store.h"

#include <sqlite3.h>

#include <functional>

#include "absl/strings/str_cat.h"

namespace saegrid::coordinator {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY,
  request_id TEXT NOT NULL UNIQUE,
  state TEXT NOT NULL,
  priority INTEGER NOT NULL,
  create_time_ms INTEGER NOT NULL,
  revision INTEGER NOT NULL,
  record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
  job_id TEXT NOT NULL REFERENCES jobs(job_id),
  number INTEGER NOT NULL,
  attempt_id TEXT NOT NULL,
  record BLOB NOT NULL,
  PRIMARY KEY (job_id, number));
CREATE TABLE IF NOT EXISTS events (
  sequence INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL REFERENCES jobs(job_id),
  revision INTEGER NOT NULL,
  time_ms INTEGER NOT NULL,
  message TEXT NOT NULL,
  record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
  worker_id TEXT PRIMARY KEY,
  last_seen_ms INTEGER NOT NULL,
  capabilities BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
  job_id TEXT NOT NULL REFERENCES jobs(job_id),
  step INTEGER NOT NULL,
  path TEXT NOT NULL,
  bad INTEGER NOT NULL,
  record BLOB NOT NULL,
  PRIMARY KEY (job_id, step));
CREATE TABLE IF NOT EXISTS evaluations (
  job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
  step INTEGER NOT NULL,
  record BLOB NOT NULL);
)sql";

int64_t Millis(const google::protobuf::Timestamp& t) { return t.seconds() * 1000 + t.nanos() / 1000000; }

// A prepared statement that finalizes itself.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Statement() { sqlite3_finalize(stmt_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  Statement& Text(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& Int(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Statement& Blob(int i, const google::protobuf::MessageLite& m) {
    const std::string bytes = m.SerializeAsString();
    sqlite3_bind_blob(stmt_, i, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT);
    return *this;
  }
  int Step() { return sqlite3_step(stmt_); }
  bool ParseBlob(int column, google::protobuf::MessageLite* m) {
    return m->ParseFromArray(sqlite3_column_blob(stmt_, column), sqlite3_column_bytes(stmt_, column));
  }
  std::string ColumnText(int column) {
    const auto* p = sqlite3_column_text(stmt_, column);
    return p ? reinterpret_cast<const char*>(p) : "";
  }
  int64_t ColumnInt(int column) { return sqlite3_column_int64(stmt_, column); }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path, absl::Duration busy_timeout) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::FailedPreconditionError(absl::StrCat("cannot open database ", path, ": ", message));
  }
  std::unique_ptr<Store> store(new Store(db));
  const std::string busy = absl::StrCat("PRAGMA busy_timeout=", absl::ToInt64Milliseconds(busy_timeout));
  for (const std::string& pragma : {std::string("PRAGMA journal_mode=WAL"), std::string("PRAGMA synchronous=FULL"),
                                    std::string("PRAGMA foreign_keys=ON"), busy}) {
    auto st = store->Exec(pragma);
    if (!st.ok()) return absl::FailedPreconditionError(absl::StrCat("database ", path, ": ", st.message()));
  }
  auto st = store->Exec(kSchema);
  if (!st.ok()) return absl::FailedPreconditionError(absl::StrCat("database ", path, ": ", st.message()));
  return store;
}

Store::~Store() { sqlite3_close(db_); }

absl::Status Store::Error(const std::string& what) const {
  return absl::InternalError(absl::StrCat("database: ", what, ": ", sqlite3_errmsg(db_)));
}

absl::Status Store::Exec(const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    return absl::InternalError(message);
  }
  return absl::OkStatus();
}

absl::StatusOr<StoredState> Store::LoadAll() {
  StoredState state;
  {
    Statement s(db_, "SELECT record FROM jobs ORDER BY create_time_ms, job_id");
    if (!s.ok()) return Error("load jobs");
    while (s.Step() == SQLITE_ROW) {
      v1::Job job;
      if (!s.ParseBlob(0, &job)) return absl::DataLossError("database: a job record does not parse");
      state.jobs.push_back(std::move(job));
    }
  }
  {
    Statement s(db_, "SELECT sequence, record FROM events ORDER BY sequence");
    if (!s.ok()) return Error("load events");
    while (s.Step() == SQLITE_ROW) {
      v1::JobEvent event;
      if (!s.ParseBlob(1, &event)) return absl::DataLossError("database: an event record does not parse");
      event.set_sequence(s.ColumnInt(0));
      state.events.push_back(std::move(event));
    }
  }
  {
    Statement s(db_, "SELECT worker_id, last_seen_ms, capabilities FROM workers ORDER BY worker_id");
    if (!s.ok()) return Error("load workers");
    while (s.Step() == SQLITE_ROW) {
      StoredWorker w;
      w.worker_id = s.ColumnText(0);
      w.last_seen_unix_ms = s.ColumnInt(1);
      if (!s.ParseBlob(2, &w.capabilities)) return absl::DataLossError("database: a worker record does not parse");
      state.workers.push_back(std::move(w));
    }
  }
  {
    Statement s(db_, "SELECT path, record FROM checkpoints ORDER BY job_id, step");
    if (!s.ok()) return Error("load checkpoints");
    while (s.Step() == SQLITE_ROW) {
      StoredCheckpoint c;
      c.path = s.ColumnText(0);
      if (!s.ParseBlob(1, &c.info)) return absl::DataLossError("database: a checkpoint record does not parse");
      state.checkpoints.push_back(std::move(c));
    }
  }
  {
    Statement s(db_, "SELECT record FROM evaluations ORDER BY job_id");
    if (!s.ok()) return Error("load evaluations");
    while (s.Step() == SQLITE_ROW) {
      v1::Evaluation e;
      if (!s.ParseBlob(0, &e)) return absl::DataLossError("database: an evaluation record does not parse");
      state.evaluations.push_back(std::move(e));
    }
  }
  return state;
}

absl::Status Store::health() const {
  absl::MutexLock lock(&mu_);
  return failure_;
}

template <typename Save>
absl::Status Store::Guarded(Save save) {
  absl::MutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  absl::Status st = save();
  if (!st.ok()) {
    failure_ = absl::UnavailableError(absl::StrCat(
        "the coordinator's database failed (", st.message(),
        "); it acknowledges nothing new until it is restarted"));
    return failure_;
  }
  return st;
}

absl::Status Store::SaveJob(const v1::Job& job, std::vector<v1::JobEvent>* new_events) {
  return Guarded([&] { return SaveJobLocked(job, new_events); });
}
absl::Status Store::SaveWorker(const StoredWorker& worker) {
  return Guarded([&] { return SaveWorkerLocked(worker); });
}
absl::Status Store::SaveCheckpoint(const StoredCheckpoint& checkpoint) {
  return Guarded([&] { return SaveCheckpointLocked(checkpoint); });
}
absl::Status Store::SaveEvaluation(const v1::Evaluation& evaluation) {
  return Guarded([&] { return SaveEvaluationLocked(evaluation); });
}

absl::Status Store::SaveJobLocked(const v1::Job& job, std::vector<v1::JobEvent>* new_events) {
  if (auto st = Exec("BEGIN IMMEDIATE"); !st.ok()) return st;
  auto fail = [&](const std::string& what) {
    absl::Status st = Error(what);
    Exec("ROLLBACK").IgnoreError();
    return st;
  };
  {
    Statement s(db_,
                "INSERT INTO jobs (job_id, request_id, state, priority, create_time_ms, revision, record) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(job_id) DO UPDATE SET "
                "state = excluded.state, revision = excluded.revision, record = excluded.record");
    if (!s.ok()) return fail("save job");
    s.Text(1, job.job_id()).Text(2, job.request_id()).Text(3, v1::JobState_Name(job.state()));
    s.Int(4, job.spec().priority()).Int(5, Millis(job.create_time())).Int(6, job.revision()).Blob(7, job);
    if (s.Step() != SQLITE_DONE) return fail("save job " + job.job_id());
  }
  for (const auto& attempt : job.attempts()) {
    Statement s(db_,
                "INSERT INTO attempts (job_id, number, attempt_id, record) VALUES (?1, ?2, ?3, ?4) "
                "ON CONFLICT(job_id, number) DO UPDATE SET record = excluded.record");
    if (!s.ok()) return fail("save attempt");
    s.Text(1, job.job_id()).Int(2, attempt.number()).Text(3, attempt.attempt_id()).Blob(4, attempt);
    if (s.Step() != SQLITE_DONE) return fail("save attempt " + attempt.attempt_id());
  }
  for (auto& event : *new_events) {
    Statement s(db_, "INSERT INTO events (job_id, revision, time_ms, message, record) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!s.ok()) return fail("save event");
    s.Text(1, job.job_id()).Int(2, event.revision()).Int(3, Millis(event.time())).Text(4, event.message());
    s.Blob(5, event);
    if (s.Step() != SQLITE_DONE) return fail("save event of " + job.job_id());
    event.set_sequence(sqlite3_last_insert_rowid(db_));
  }
  if (auto st = Exec("COMMIT"); !st.ok()) {
    Exec("ROLLBACK").IgnoreError();
    return st;
  }
  return absl::OkStatus();
}

absl::Status Store::SaveWorkerLocked(const StoredWorker& worker) {
  Statement s(db_,
              "INSERT INTO workers (worker_id, last_seen_ms, capabilities) VALUES (?1, ?2, ?3) "
              "ON CONFLICT(worker_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, "
              "capabilities = excluded.capabilities");
  if (!s.ok()) return Error("save worker");
  s.Text(1, worker.worker_id).Int(2, worker.last_seen_unix_ms).Blob(3, worker.capabilities);
  if (s.Step() != SQLITE_DONE) return Error("save worker " + worker.worker_id);
  return absl::OkStatus();
}

absl::Status Store::SaveCheckpointLocked(const StoredCheckpoint& c) {
  Statement s(db_,
              "INSERT INTO checkpoints (job_id, step, path, bad, record) VALUES (?1, ?2, ?3, ?4, ?5) "
              "ON CONFLICT(job_id, step) DO UPDATE SET path = excluded.path, bad = excluded.bad, "
              "record = excluded.record");
  if (!s.ok()) return Error("save checkpoint");
  s.Text(1, c.info.job_id()).Int(2, c.info.step()).Text(3, c.path).Int(4, c.info.bad() ? 1 : 0).Blob(5, c.info);
  if (s.Step() != SQLITE_DONE) return Error("save checkpoint of " + c.info.job_id());
  return absl::OkStatus();
}

absl::Status Store::SaveEvaluationLocked(const v1::Evaluation& e) {
  Statement s(db_,
              "INSERT INTO evaluations (job_id, step, record) VALUES (?1, ?2, ?3) "
              "ON CONFLICT(job_id) DO UPDATE SET step = excluded.step, record = excluded.record");
  if (!s.ok()) return Error("save evaluation");
  s.Text(1, e.job_id()).Int(2, e.step()).Blob(3, e);
  if (s.Step() != SQLITE_DONE) return Error("save evaluation of " + e.job_id());
  return absl::OkStatus();
}

}  // namespace saegrid::coordinator

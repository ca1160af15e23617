#include "metrics/training_metrics.h"

#include <algorithm>
#include <string>

namespace saegrid::metrics {
namespace {

using prometheus::Histogram;

prometheus::Family<prometheus::Gauge>& Gauge(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}
prometheus::Family<prometheus::Counter>& Counter(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}
prometheus::Family<prometheus::Histogram>& Hist(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r);
}

// Step and collective times span milliseconds (toy jobs) to tens of seconds (wide SAEs on CPU).
const Histogram::BucketBoundaries kSecondsBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1,      2.5,   5,    10,    30,   60};

}  // namespace

TrainingMetrics::TrainingMetrics(prometheus::Registry& r)
    : fvu_(Gauge(r, "saegrid_training_fvu", "Fraction of variance unexplained of the last step (rank 0)")),
      mse_(Gauge(r, "saegrid_training_mse", "Mean squared reconstruction error of the last step (rank 0)")),
      l0_(Gauge(r, "saegrid_training_l0", "Mean active latents per token in the last step (rank 0)")),
      auxk_(Gauge(r, "saegrid_training_auxk_loss", "AuxK loss of the last step (rank 0)")),
      loss_(Gauge(r, "saegrid_training_loss", "Training objective of the last step (rank 0)")),
      dead_fraction_(Gauge(r, "saegrid_training_dead_latents_ratio", "Fraction of latents that are dead (rank 0)")),
      dead_(Gauge(r, "saegrid_training_dead_latents", "Number of dead latents (rank 0)")),
      lr_(Gauge(r, "saegrid_training_learning_rate", "Learning rate of the last step (rank 0)")),
      step_(Gauge(r, "saegrid_training_step", "Training steps completed")),
      tokens_per_second_(Gauge(r, "saegrid_training_tokens_per_second", "Tokens per second of the last step")),
      tokens_(Counter(r, "saegrid_training_tokens_total", "Tokens trained by this rank's gang since it started")),
      overflow_(Counter(r, "saegrid_training_capacity_overflow_tokens_total",
                        "Tokens whose top-k may have been truncated by the capacity factor (rank 0)")),
      truncated_(Counter(r, "saegrid_training_capacity_truncated_tokens_total",
                         "Tokens whose top-k was truncated by the capacity factor (rank 0)")),
      checkpoints_(Counter(r, "saegrid_checkpoint_writes_total", "Checkpoints written (rank 0)")),
      checkpoint_bytes_(Counter(r, "saegrid_checkpoint_written_bytes_total", "Bytes of checkpoints written (rank 0)")),
      step_seconds_(Hist(r, "saegrid_training_step_duration_seconds", "Duration of one training step")),
      collective_seconds_(Hist(r, "saegrid_training_collective_duration_seconds",
                               "Time per step in collectives, by collective")),
      checkpoint_seconds_(Hist(r, "saegrid_checkpoint_write_duration_seconds", "Time to write one checkpoint")),
      data_wait_seconds_(Hist(r, "saegrid_training_data_wait_duration_seconds",
                              "Time per step waiting for the training batch (a language model run on the fly)")),
      ranks_running_(Gauge(r, "saegrid_worker_ranks_running", "Training ranks this worker runs").Add({})),
      rank_results_(Counter(r, "saegrid_worker_rank_results_total", "Ranks that ended on this worker, by outcome")) {}

void TrainingMetrics::RankEnded(const std::string& outcome) {
  ranks_running_.Decrement();
  rank_results_.Add({{"outcome", outcome}}).Increment();
}

TrainingMetrics::Rank::Rank(TrainingMetrics* owner, const std::string& job_id, int rank, int64_t start_tokens)
    : leader_(rank == 0), tokens_seen_(start_tokens) {
  const prometheus::Labels labels = {{"job_id", job_id}, {"rank", std::to_string(rank)}};
  auto with = [&](const char* key, const char* value) {
    prometheus::Labels l = labels;
    l[key] = value;
    return l;
  };
  step_ = Track(owner->step_, labels);
  tokens_per_second_ = Track(owner->tokens_per_second_, labels);
  tokens_ = Track(owner->tokens_, labels);
  step_seconds_ = Track(owner->step_seconds_, labels, kSecondsBuckets);
  allgather_ = Track(owner->collective_seconds_, with("collective", "allgather"), kSecondsBuckets);
  allreduce_ = Track(owner->collective_seconds_, with("collective", "allreduce"), kSecondsBuckets);
  data_wait_ = Track(owner->data_wait_seconds_, labels, kSecondsBuckets);
  if (!leader_) return;
  fvu_ = Track(owner->fvu_, labels);
  mse_ = Track(owner->mse_, labels);
  l0_ = Track(owner->l0_, labels);
  auxk_ = Track(owner->auxk_, labels);
  loss_ = Track(owner->loss_, labels);
  dead_fraction_ = Track(owner->dead_fraction_, labels);
  dead_ = Track(owner->dead_, labels);
  lr_ = Track(owner->lr_, labels);
  overflow_ = Track(owner->overflow_, labels);
  truncated_ = Track(owner->truncated_, labels);
  checkpoints_ = Track(owner->checkpoints_, labels);
  checkpoint_bytes_ = Track(owner->checkpoint_bytes_, labels);
  checkpoint_seconds_ = Track(owner->checkpoint_seconds_, labels, kSecondsBuckets);
}

TrainingMetrics::Rank::~Rank() {
  for (auto it = removals_.rbegin(); it != removals_.rend(); ++it) (*it)();
}

void TrainingMetrics::Rank::OnStep(const v1::TrainingStep& s) {
  const v1::TrainingProgress& p = s.progress();
  step_->Set(static_cast<double>(p.step()));
  tokens_per_second_->Set(p.tokens_per_second());
  if (p.tokens() > tokens_seen_) tokens_->Increment(static_cast<double>(p.tokens() - tokens_seen_));
  tokens_seen_ = std::max(tokens_seen_, p.tokens());
  step_seconds_->Observe(p.step_seconds());
  if (s.has_profile()) {
    allgather_->Observe(s.profile().allgather());
    allreduce_->Observe(s.profile().allreduce());
    data_wait_->Observe(s.profile().data());
  }
  if (!leader_) return;
  fvu_->Set(p.fvu());
  mse_->Set(p.mse());
  l0_->Set(p.l0());
  auxk_->Set(p.auxk_loss());
  loss_->Set(p.loss());
  dead_fraction_->Set(p.dead_fraction());
  dead_->Set(static_cast<double>(p.num_dead()));
  lr_->Set(p.lr());
  overflow_->Increment(static_cast<double>(s.overflow_tokens()));
  truncated_->Increment(static_cast<double>(s.truncated_tokens()));
}

void TrainingMetrics::Rank::OnCheckpoint(const v1::CheckpointWritten& c) {
  if (!leader_) return;
  checkpoints_->Increment();
  checkpoint_bytes_->Increment(static_cast<double>(c.bytes()));
  checkpoint_seconds_->Observe(c.seconds());
}

}  // namespace saegrid::metrics

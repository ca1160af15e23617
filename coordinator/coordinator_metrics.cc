#include "coordinator/coordinator_metrics.h"

#include <limits>

#include "google/protobuf/util/time_util.h"

namespace saegrid::coordinator {
namespace {

struct Figure {
  const char* name;
  const char* help;
};

// One gauge family per figure, labelled job_id.
const Figure kJobFigures[] = {
    {"saegrid_job_fvu", "FVU of the job's newest step, as last reported"},
    {"saegrid_job_mse", "MSE of the job's newest step, as last reported"},
    {"saegrid_job_l0", "Mean active latents per token of the job's newest step"},
    {"saegrid_job_auxk_loss", "AuxK loss of the job's newest step"},
    {"saegrid_job_dead_latents_ratio", "Fraction of the job's latents that are dead, as last reported"},
    {"saegrid_job_dead_latents", "Number of the job's dead latents, as last reported"},
    {"saegrid_job_step", "Training steps the job has completed"},
    {"saegrid_job_tokens", "Tokens the job has trained (its position in the data)"},
    {"saegrid_job_tokens_consumed", "Tokens trained over all attempts, including recomputed ones"},
    {"saegrid_job_tokens_per_second", "Training throughput of the job's newest step"},
    {"saegrid_job_learning_rate", "Learning rate of the job's newest step"},
    {"saegrid_job_capacity_overflow_ratio", "Share of the newest step's tokens whose top-k hit the capacity factor"},
    {"saegrid_job_restarts", "Times the job's gang was restarted"},
    {"saegrid_job_running", "1 while the job is RUNNING, else 0"},
    {"saegrid_job_progress_timestamp_seconds", "Unix time of the job's newest progress report"},
    {"saegrid_job_evaluation_fvu", "FVU of the job's final evaluation"},
    {"saegrid_job_evaluation_dead_latents_ratio", "Dead-latent fraction of the job's final evaluation"},
    // The papers' evaluations (evaluation.run): NaN until the job reports them.
    {"saegrid_job_evaluation_loss_recovered", "Loss recovered with the SAE spliced in, (CE_zero - CE_sae) / (CE_zero - CE_clean)"},
    {"saegrid_job_evaluation_ce_increase_nats", "Cross-entropy increase with the SAE spliced in, CE_sae - CE_clean"},
    {"saegrid_job_evaluation_kl_nats", "Mean KL divergence of the spliced model's next-token distribution from the clean one"},
    {"saegrid_job_evaluation_ablation_sparsity", "Mean ablation sparsity (L1/L2)^2/(V*T) of the sampled latents"},
    {"saegrid_job_evaluation_ablation_sparsity_baseline", "Mean ablation sparsity of single hookpoint coordinates"},
    {"saegrid_job_evaluation_effective_tokens", "Mean effective number of tokens per latent"},
    {"saegrid_job_evaluation_n2g_f1", "Mean N2G F1 over the sampled latents"},
    {"saegrid_job_evaluation_probe_loss", "Mean best 1-d probe cross-entropy on a latent over the tasks"},
    {"saegrid_job_evaluation_probe_baseline_loss", "Mean best 1-d probe cross-entropy on an input channel"},
    {"saegrid_job_evaluation_shrinkage_ratio", "Refined / original activations with the active set frozen (> 1: shrinkage)"},
    {"saegrid_job_evaluation_novel_latents_ratio", "Fraction of latents with max decoder cosine below the threshold to the compared SAE"},
};

std::string StateLabel(v1::JobState s) {
  std::string name = v1::JobState_Name(s).substr(10);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& r)
    : jobs_(prometheus::BuildGauge().Name("saegrid_jobs").Help("Jobs by state").Register(r)),
      workers_(prometheus::BuildGauge().Name("saegrid_workers").Help("Registered workers by state").Register(r)),
      scheduling_wait_(prometheus::BuildHistogram()
                           .Name("saegrid_scheduling_wait_seconds")
                           .Help("Time from submission (or restart) until a gang was assigned")
                           .Register(r)
                           .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900,
                                                                            3600, 14400})),
      restarts_(prometheus::BuildCounter()
                    .Name("saegrid_job_restarts_total")
                    .Help("Gang restarts, by the reason of the failure")
                    .Register(r)),
      heartbeat_misses_(prometheus::BuildCounter()
                            .Name("saegrid_worker_heartbeat_misses_total")
                            .Help("Workers declared lost after missing their heartbeat deadline")
                            .Register(r)
                            .Add({})),
      checkpoints_stored_(prometheus::BuildCounter()
                              .Name("saegrid_checkpoints_stored_total")
                              .Help("Checkpoints uploaded and stored")
                              .Register(r)
                              .Add({})),
      checkpoint_bytes_stored_(prometheus::BuildCounter()
                                   .Name("saegrid_checkpoint_stored_bytes_total")
                                   .Help("Bytes of checkpoints uploaded and stored")
                                   .Register(r)
                                   .Add({})) {
  for (const auto& f : kJobFigures) job_figures_.push_back(&prometheus::BuildGauge().Name(f.name).Help(f.help).Register(r));
  for (int s = v1::JOB_STATE_PENDING; s <= v1::JOB_STATE_CANCELLED; ++s) {
    jobs_.Add({{"state", StateLabel(static_cast<v1::JobState>(s))}}).Set(0);
  }
}

void CoordinatorMetrics::JobRestarted(v1::FailureReason reason) {
  std::string name = v1::FailureReason_Name(reason).substr(15);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  restarts_.Add({{"reason", name}}).Increment();
}

void CoordinatorMetrics::Refresh(const std::map<std::string, v1::Job>& jobs,
                                 const std::map<std::string, int>& workers_by_state,
                                 const std::map<std::string, const v1::Evaluation*>& evaluations, absl::Time now) {
  std::map<std::string, int> by_state;
  for (int s = v1::JOB_STATE_PENDING; s <= v1::JOB_STATE_CANCELLED; ++s) by_state[StateLabel(static_cast<v1::JobState>(s))] = 0;
  for (const auto& [id, job] : jobs) {
    ++by_state[StateLabel(job.state())];
    const bool ended = job.state() == v1::JOB_STATE_SUCCEEDED || job.state() == v1::JOB_STATE_FAILED ||
                       job.state() == v1::JOB_STATE_CANCELLED;
    const absl::Time end = absl::FromUnixSeconds(job.end_time().seconds());
    const bool keep = !ended || now - end < absl::Hours(1);
    auto series = job_series_.find(id);
    if (!keep) {
      if (series != job_series_.end()) {
        for (size_t i = 0; i < job_figures_.size(); ++i) job_figures_[i]->Remove(series->second.gauges[i]);
        job_series_.erase(series);
      }
      continue;
    }
    if (series == job_series_.end()) {
      JobSeries s;
      for (auto* family : job_figures_) s.gauges.push_back(&family->Add({{"job_id", id}}));
      series = job_series_.emplace(id, std::move(s)).first;
    }
    const auto& p = job.progress();
    constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
    auto it = evaluations.find(id);
    const v1::Evaluation* e = it == evaluations.end() ? nullptr : it->second;
    const double values[] = {p.fvu(), p.mse(), p.l0(), p.auxk_loss(), p.dead_fraction(),
                             static_cast<double>(p.num_dead()), static_cast<double>(p.step()),
                             static_cast<double>(p.tokens()), static_cast<double>(job.tokens_consumed()),
                             p.tokens_per_second(), p.lr(), p.overflow_rate(), static_cast<double>(job.restarts()),
                             job.state() == v1::JOB_STATE_RUNNING ? 1.0 : 0.0,
                             static_cast<double>(p.report_time().seconds()) + p.report_time().nanos() * 1e-9,
                             e ? e->fvu() : 0.0, e ? e->dead_fraction() : 0.0,
                             e && e->has_downstream_loss() ? e->downstream_loss().loss_recovered() : kNan,
                             e && e->has_downstream_loss() ? e->downstream_loss().ce_sae() - e->downstream_loss().ce_clean() : kNan,
                             e && e->has_downstream_loss() ? e->downstream_loss().kl_sae() : kNan,
                             e && e->has_ablation_sparsity() ? e->ablation_sparsity().mean() : kNan,
                             e && e->has_ablation_sparsity() ? e->ablation_sparsity().baseline_mean() : kNan,
                             e && e->has_token_stats() ? e->token_stats().mean_effective_tokens() : kNan,
                             e && e->has_n2g() ? e->n2g().f1() : kNan,
                             e && e->has_probes() ? e->probes().mean_latent_loss() : kNan,
                             e && e->has_probes() ? e->probes().mean_channel_loss() : kNan,
                             e && e->has_shrinkage() ? e->shrinkage().mean_ratio() : kNan,
                             e && e->has_sae_comparison() ? e->sae_comparison().novel_fraction() : kNan};
    static_assert(sizeof(values) / sizeof(values[0]) == sizeof(kJobFigures) / sizeof(kJobFigures[0]));
    for (size_t i = 0; i < job_figures_.size(); ++i) series->second.gauges[i]->Set(values[i]);
  }
  for (const auto& [state, count] : by_state) jobs_.Add({{"state", state}}).Set(count);
  for (const auto& [state, count] : workers_by_state) workers_.Add({{"state", state}}).Set(count);
}

}  // namespace saegrid::coordinator

#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

#include "common.h"
#include "utf8.h"

namespace qwen {

// One llama sequence id: the tokens whose K/V it holds (positions 0..n-1) and the cache cells behind them.
struct Engine::Sequence {
  llama_seq_id id;
  std::vector<llama_token> tokens;
  std::vector<uint32_t> cells;  // cell ids (mirror bookkeeping), one per token
  uint64_t lastUse = 0;
  bool busy = false;  // owned by an admitted request
};

// An admitted request and its progress.
struct Engine::Active {
  EngineRequest req;
  Sequence* seq = nullptr;
  enum Phase { Prefill, Generating, Labels } phase = Prefill;
  size_t next = 0;      // next prompt token to decode
  int32_t row = -1;     // this step's output row for the sequence's last token
  bool done = false;
  double tStart = 0, tPromptDone = 0;
  int32_t cachedTokens = 0;
  // Generate
  std::unique_ptr<SequenceSampler> sampler;
  std::unique_ptr<TextAssembler> text;
  std::vector<llama_token> out;
  std::vector<TokenLogprob> pendingLogprobs;  // tokens not yet flushed with a piece
  bool hasPending = false;
  llama_token pending = 0;
  // Logits
  std::vector<float> logits;
  // Score: each label decodes on its own sequence sharing the prompt's cells; the log-probability of label token
  // j comes from the row of token j-1 (the prompt's last row for j = 0).
  struct Label {
    Sequence* seq = nullptr;
    size_t decoded = 0;  // label tokens decoded so far (the last one never needs decoding)
  };
  std::vector<Label> labels;
  std::vector<std::vector<float>> labelLogprobs;
};

namespace {

// Prompt chunks beside generating sequences (see Step): aim at this long a decode, never fewer tokens than this.
constexpr double kChunkTargetMs = 250;
constexpr int32_t kChunkMin = 16;

size_t CommonPrefix(const std::vector<llama_token>& a, const std::vector<llama_token>& b) {
  size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

std::string TokenBytes(const llama_vocab* vocab, llama_token token) {
  char buf[256];
  int32_t n = llama_token_to_piece(vocab, token, buf, sizeof buf, 0, false);
  if (n < 0) {
    std::string big(-n, '\0');
    n = llama_token_to_piece(vocab, token, big.data(), (int32_t)big.size(), 0, false);
    return n > 0 ? big.substr(0, n) : std::string();
  }
  return std::string(buf, n);
}

}  // namespace

Engine::Engine(llama_context* ctx, const llama_vocab* vocab, EngineConfig config, Sink sink)
    : ctx_(ctx), vocab_(vocab), mem_(llama_get_memory(ctx)), config_(std::move(config)), sink_(std::move(sink)),
      nVocab_(llama_vocab_n_tokens(vocab)) {
  batch_ = llama_batch_init(config_.batchSize, 0, config_.sequences);  // a prompt token may belong to its labels' sequences too
  for (int32_t i = 0; i < config_.sequences; i++) {
    auto seq = std::make_unique<Sequence>();
    seq->id = i;
    sequences_.push_back(std::move(seq));
  }
  if (config_.promptCache.maxBytes > 0) promptCache_ = std::make_unique<PromptCache>(config_.promptCache, config_.modelIdentity);
  thread_ = std::thread(&Engine::Run, this);
}

Engine::~Engine() {
  Stop();
  llama_batch_free(batch_);
}

void Engine::Submit(EngineRequest request) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back(std::move(request));
    stats_.queued = (int32_t)pending_.size();
  }
  wake_.notify_one();
}

void Engine::Cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancels_.insert(id);
  }
  wake_.notify_one();
}

void Engine::Stop() {
  stopping_ = true;
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

EngineStats Engine::Stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Engine::PublishStats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.active = (int32_t)actives_.size();
  stats_.queued = (int32_t)pending_.size();
  stats_.cellsUsed = cellsUsed_;
  size_t cached = 0;
  int32_t idle = 0;
  for (auto& s : sequences_) {
    cached += s->tokens.size();
    if (!s->busy && !s->tokens.empty()) idle++;
  }
  stats_.cachedTokens = cached;
  stats_.idleSequences = idle;
  if (promptCache_) stats_.promptCacheBytes = promptCache_->bytes();
}

uint32_t Engine::NewCell() {
  uint32_t id;
  if (!freeCellIds_.empty()) {
    id = freeCellIds_.back();
    freeCellIds_.pop_back();
  } else {
    id = (uint32_t)cellRefs_.size();
    cellRefs_.push_back(0);
  }
  cellRefs_[id] = 1;
  cellsUsed_++;
  return id;
}

void Engine::ReleaseCells(const std::vector<uint32_t>& cells, size_t from) {
  for (size_t i = from; i < cells.size(); i++) {
    if (--cellRefs_[cells[i]] == 0) {
      freeCellIds_.push_back(cells[i]);
      cellsUsed_--;
    }
  }
}

void Engine::TrimSequence(Sequence& seq, size_t keep) {
  if (keep >= seq.tokens.size()) return;
  llama_memory_seq_rm(mem_, seq.id, (llama_pos)keep, -1);
  ReleaseCells(seq.cells, keep);
  seq.tokens.resize(keep);
  seq.cells.resize(keep);
}

void Engine::ClearSequence(Sequence& seq, bool saveState) {
  if (seq.tokens.empty()) return;
  if (saveState && promptCache_ && seq.tokens.size() >= PromptCache::kMinTokens && !promptCache_->Covers(seq.tokens)) {
    const size_t size = llama_state_seq_get_size(ctx_, seq.id);
    std::vector<uint8_t> state(size);
    if (size > 0 && llama_state_seq_get_data(ctx_, state.data(), size, seq.id) == size) {
      promptCache_->Store(seq.tokens, std::move(state));
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.promptCacheStored++;
    }
  }
  TrimSequence(seq, 0);
}

void Engine::CopyPrefix(Sequence& from, Sequence& to, size_t n) {
  llama_memory_seq_cp(mem_, from.id, to.id, 0, (llama_pos)n);
  to.tokens.assign(from.tokens.begin(), from.tokens.begin() + n);
  to.cells.assign(from.cells.begin(), from.cells.begin() + n);
  for (uint32_t c : to.cells) cellRefs_[c]++;
}

// A sequence id with no tokens; evicts the least recently used idle sequence (never `keep`) when none is empty.
Engine::Sequence* Engine::EmptySequence(const Sequence* keep) {
  for (auto& s : sequences_) {
    if (!s->busy && s->tokens.empty() && s.get() != keep) return s.get();
  }
  return nullptr;
}

Engine::Sequence* Engine::FreeSequence(const Sequence* keep) {
  if (Sequence* empty = EmptySequence(keep)) return empty;
  Sequence* lru = nullptr;
  for (auto& s : sequences_) {
    if (!s->busy && s.get() != keep && (!lru || s->lastUse < lru->lastUse)) lru = s.get();
  }
  if (lru) ClearSequence(*lru, true);
  return lru;
}

// Makes room in the KV pool for `tokens` new cells by evicting idle sequences, least recently used first.
bool Engine::EnsureRoom(size_t tokens) {
  while (cellsUsed_ + tokens > config_.poolCells) {
    Sequence* lru = nullptr;
    for (auto& s : sequences_) {
      if (!s->busy && !s->tokens.empty() && (!lru || s->lastUse < lru->lastUse)) lru = s.get();
    }
    if (!lru) return false;
    ClearSequence(*lru, true);
  }
  return true;
}

bool Engine::Admit(EngineRequest& request, std::vector<EngineEvent>& events) {
  const std::vector<llama_token>& prompt = request.prompt;
  // Longest cached prefix over every sequence, running or idle; always leave one prompt token to decode (its
  // logits are needed). Logits requests need every row, so they start from nothing.
  Sequence* best = nullptr;
  size_t bestLen = 0;
  if (request.cachePrompt && request.kind != RequestKind::Logits) {
    for (auto& s : sequences_) {
      size_t n = std::min(CommonPrefix(s->tokens, prompt), prompt.size() - 1);
      if (n > bestLen) best = s.get(), bestLen = n;
    }
  }
  Sequence* target = EmptySequence(nullptr);
  if (!target && best && !best->busy) {
    target = best;  // no empty sequence: take the idle one that matches over, trimming its tail
    TrimSequence(*target, bestLen);
  } else {
    if (!target) target = FreeSequence(best);
    if (!target) return false;  // every sequence is busy: wait for one to retire
    if (best && bestLen > 0) CopyPrefix(*best, *target, bestLen);
  }
  size_t have = target->tokens.size();
  // The host prompt cache may hold a longer prefix (a system prompt whose sequence was evicted, or saved on disk).
  if (promptCache_ && request.cachePrompt && request.kind != RequestKind::Logits) {
    size_t common = 0;
    const PromptCache::Entry* entry = promptCache_->Find(prompt, &common);
    common = std::min(common, prompt.size() - 1);
    std::vector<uint8_t> state;
    std::vector<llama_token> saved = entry ? entry->tokens : std::vector<llama_token>();  // Load may drop the entry
    if (entry && common > have + PromptCache::kMinGain && promptCache_->Load(entry, state)) {
      TrimSequence(*target, 0);
      if (EnsureRoom(saved.size()) && llama_state_seq_set_data(ctx_, state.data(), state.size(), target->id) == state.size()) {
        target->tokens = saved;
        target->cells.clear();
        for (size_t i = 0; i < target->tokens.size(); i++) target->cells.push_back(NewCell());
        TrimSequence(*target, common);
        std::lock_guard<std::mutex> lock(mutex_);
        stats_.promptCacheHits++;
      } else {
        llama_memory_seq_rm(mem_, target->id, -1, -1);
        if (best && best != target && bestLen > 0 && bestLen <= best->tokens.size()) CopyPrefix(*best, *target, bestLen);
      }
    }
  }
  target->busy = true;
  target->lastUse = ++useClock_;
  auto a = std::make_unique<Active>();
  a->seq = target;
  a->next = target->tokens.size();
  a->cachedTokens = (int32_t)a->next;
  a->tStart = NowMs();
  a->req = std::move(request);
  if (a->req.kind == RequestKind::Generate) {
    try {
      // the vocabulary tables grammars need, built once per engine on first use
      if (!a->req.sampling.grammar.empty() && !grammarVocab_) grammarVocab_ = std::make_unique<GrammarVocab>(vocab_);
      a->sampler = std::make_unique<SequenceSampler>(vocab_, a->req.sampling, a->req.prompt, grammarVocab_.get());
    } catch (const std::exception& e) {
      target->busy = false;
      events.push_back({EngineEvent::Error, a->req.id, e.what(), "ERR_GRAMMAR"});
      return true;
    }
    a->text = std::make_unique<TextAssembler>(a->req.sampling.stop);
  }
  if (a->req.kind == RequestKind::Logits) a->logits.resize(a->req.prompt.size() * (size_t)nVocab_);
  if (a->req.kind == RequestKind::Score) {
    a->labels.resize(a->req.labels.size());
    a->labelLogprobs.resize(a->req.labels.size());
  }
  events.push_back({EngineEvent::Start, a->req.id});
  actives_.push_back(std::move(a));
  return true;
}

void Engine::Retire(Active& a) {
  a.done = true;
  if (a.seq) {
    a.seq->busy = false;
    a.seq->lastUse = ++useClock_;
  }
  for (auto& label : a.labels) {
    if (label.seq) ReleaseLabelSequence(label.seq);
  }
}

void Engine::Finish(Active& a, const std::string& reason, std::vector<EngineEvent>& events) {
  if (a.done) return;
  EngineEvent ev{EngineEvent::Done, a.req.id};
  ev.code = reason;
  if (a.text) {
    std::string rest = a.text->stopped() ? "" : a.text->Flush();
    if (!rest.empty() || !a.pendingLogprobs.empty()) {
      EngineEvent piece{EngineEvent::Piece, a.req.id, std::move(rest)};
      piece.logprobs = std::move(a.pendingLogprobs);
      events.push_back(std::move(piece));
    }
  }
  ev.tokens = a.out;
  ev.promptTokens = (int32_t)a.req.prompt.size();
  ev.cachedTokens = a.cachedTokens;
  const double now = NowMs();
  ev.promptMs = (a.tPromptDone ? a.tPromptDone : now) - a.tStart;
  ev.genMs = a.tPromptDone ? now - a.tPromptDone : 0;
  if (a.req.kind == RequestKind::Logits && reason != "abort") ev.floats = std::move(a.logits);
  if (a.req.kind == RequestKind::Score && reason != "abort") {
    for (auto& l : a.labelLogprobs) ev.floats.insert(ev.floats.end(), l.begin(), l.end());
  }
  events.push_back(std::move(ev));
  Retire(a);
}

void Engine::Fail(Active& a, const std::string& code, const std::string& message, std::vector<EngineEvent>& events) {
  if (a.done) return;
  events.push_back({EngineEvent::Error, a.req.id, message, code});
  Retire(a);
}

void Engine::SampleGeneration(Active& a, int32_t row, std::vector<EngineEvent>& events) {
  const SamplingOptions& o = a.req.sampling;
  const float* logits = llama_get_logits_ith(ctx_, row);
  llama_token token;
  try {
    token = a.sampler->Sample(logits);
  } catch (const std::exception& e) {
    return Fail(a, "ERR_GRAMMAR", std::string("sampling failed: ") + e.what(), events);
  }
  if (o.logprobs >= 0) a.pendingLogprobs.push_back(a.sampler->Logprobs(logits, token, o.logprobs));
  a.out.push_back(token);
  if (!o.ignoreEos && llama_vocab_is_eog(vocab_, token)) return Finish(a, "stop", events);
  std::string piece = a.text->Push(TokenBytes(vocab_, token));
  if (!piece.empty()) {
    EngineEvent ev{EngineEvent::Piece, a.req.id, std::move(piece)};
    ev.logprobs = std::move(a.pendingLogprobs);
    a.pendingLogprobs.clear();
    events.push_back(std::move(ev));
  }
  if (a.text->stopped()) return Finish(a, "stop", events);
  if ((int32_t)a.out.size() >= o.maxTokens) return Finish(a, "length", events);
  if (a.seq->tokens.size() + 1 > config_.contextSize) return Finish(a, "length", events);  // the context is full
  a.pending = token;
  a.hasPending = true;
}

// A classification's multi-token labels ride with its prompt's last chunk: each gets a sequence holding the prompt's
// cells decoded so far, the chunk's tokens are decoded for all of them at once (a token may belong to several
// sequences in a unified KV cache) and the labels' tokens follow in the same batch, so scoring costs no decode of
// its own, that is no second pass over the weights. Labels that find no sequence or no room decode in the next step.
std::vector<size_t> Engine::AttachLabels(Active& a, int32_t spareTokens, int32_t spareRows) {
  std::vector<size_t> riders;
  for (size_t l = 0; l < a.labels.size(); l++) {
    auto& label = a.labels[l];
    const int32_t need = (int32_t)a.req.labels[l].size() - 1;
    const bool fits = need > 0 && need <= spareTokens && need <= spareRows;
    if (fits && !label.seq) {
      if (Sequence* s = FreeSequence(a.seq)) {
        s->busy = true;
        label.seq = s;
      }
    }
    if (!fits || !label.seq) {
      if (label.seq) ReleaseLabelSequence(label.seq);  // held since a batch that did not run: it decodes in the Labels phase
      continue;
    }
    if (label.seq->tokens.size() != a.seq->tokens.size()) {  // coupled sequences must hold the same positions
      TrimSequence(*label.seq, 0);
      CopyPrefix(*a.seq, *label.seq, a.seq->tokens.size());
    }
    riders.push_back(l);
    spareTokens -= need;
    spareRows -= need;
  }
  return riders;
}

void Engine::Step(std::vector<EngineEvent>& events) {
  // Build the batch: first the next token of every generating sequence, then label tokens of classifications,
  // then prompt chunks in admission order. While any sequence is generating, all prompts together get the tokens
  // this machine decodes in about kChunkTargetMs (16 to a quarter of the batch), so a prompt arriving delays the
  // streams' next token by one such decode, not by a whole prompt: 0.6B on two cores decodes ~150 prompt tokens a
  // second, so a fixed 128-token chunk held every stream for ~0.9 s.
  llama_batch& batch = batch_;
  batch.n_tokens = 0;
  int32_t outputs = 0;
  // kind 0 gen, 1 prompt, 2 label; riders: a prompt chunk's labels whose sequences share its tokens (AttachLabels)
  struct Added { Active* a; int32_t kind; size_t label; int32_t first; int32_t count; std::vector<size_t> riders = {}; };
  std::vector<Added> added;
  auto add = [&](const Sequence& seq, llama_token t, size_t pos, bool output) {
    const int32_t i = batch.n_tokens++;
    batch.token[i] = t;
    batch.pos[i] = (llama_pos)pos;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = seq.id;
    batch.logits[i] = output;
    outputs += output;
    return i;
  };
  bool generating = false;
  for (auto& a : actives_) {
    if (a->phase != Active::Generating || !a->hasPending) continue;
    if (batch.n_tokens >= config_.batchSize || outputs >= config_.maxOutputs) break;
    a->row = add(*a->seq, a->pending, a->seq->tokens.size(), true);
    added.push_back({a.get(), 0, 0, a->row, 1});
    generating = true;
  }
  // label tokens (classification): token j of a label is decoded at position prompt + j on the label's sequence
  for (auto& a : actives_) {
    if (a->phase != Active::Labels) continue;
    for (size_t l = 0; l < a->labels.size(); l++) {
      auto& label = a->labels[l];
      const auto& tokens = a->req.labels[l];
      if (tokens.size() <= 1 || label.decoded + 1 >= tokens.size()) continue;
      if (!label.seq) {
        Sequence* s = FreeSequence(a->seq);
        if (!s) continue;  // no sequence free: this label waits for a later step
        s->busy = true;
        CopyPrefix(*a->seq, *s, a->seq->tokens.size());
        label.seq = s;
      }
      const int32_t first = batch.n_tokens;
      int32_t count = 0;
      while (label.decoded + count + 1 < tokens.size() && batch.n_tokens < config_.batchSize && outputs < config_.maxOutputs) {
        add(*label.seq, tokens[label.decoded + count], label.seq->tokens.size() + count, true);
        count++;
      }
      if (count) added.push_back({a.get(), 2, l, first, count});
    }
  }
  const int32_t chunkMax = std::max(kChunkMin, config_.batchSize / 4);
  const int32_t promptBudget = !generating ? config_.batchSize
                               : promptRate_ <= 0 ? std::min(64, chunkMax)
                                                  : std::clamp((int32_t)(promptRate_ * kChunkTargetMs / 1000), kChunkMin, chunkMax);
  int32_t promptUsed = 0;
  for (auto& a : actives_) {
    if (a->phase != Active::Prefill) continue;
    const bool allRows = a->req.kind == RequestKind::Logits;
    int32_t room = std::min(config_.batchSize - batch.n_tokens, promptBudget - promptUsed);
    if (allRows) room = std::min(room, config_.maxOutputs - outputs);
    else if (outputs >= config_.maxOutputs) room = 0;
    const int32_t n = (int32_t)std::min<size_t>(room, a->req.prompt.size() - a->next);
    if (n <= 0) continue;
    const std::vector<size_t> riders = a->req.kind == RequestKind::Score && a->next + n == a->req.prompt.size()
                                           ? AttachLabels(*a, config_.batchSize - batch.n_tokens - n, config_.maxOutputs - outputs - 1)
                                           : std::vector<size_t>();
    const int32_t first = batch.n_tokens;
    for (int32_t k = 0; k < n; k++) {
      const bool last = a->next + k + 1 == a->req.prompt.size();
      const int32_t i = add(*a->seq, a->req.prompt[a->next + k], a->seq->tokens.size() + k, allRows || last);
      for (size_t l : riders) batch.seq_id[i][batch.n_seq_id[i]++] = a->labels[l].seq->id;
    }
    promptUsed += n;
    added.push_back({a.get(), 1, 0, first, n, riders});
    for (size_t l : riders) {  // label token j at position prompt + j, after the prompt tokens it shares
      const auto& tokens = a->req.labels[l];
      const int32_t labelFirst = batch.n_tokens, count = (int32_t)tokens.size() - 1;
      for (int32_t j = 0; j < count; j++) add(*a->labels[l].seq, tokens[j], a->req.prompt.size() + j, true);
      added.push_back({a.get(), 2, l, labelFirst, count});
    }
  }
  if (batch.n_tokens == 0) return;

  if (!EnsureRoom(batch.n_tokens)) {
    // The pool is full of running sequences (a pool smaller than parallel × contextSize): end the newest.
    for (auto it = actives_.rbegin(); it != actives_.rend(); ++it) {
      if (!(*it)->done) {
        Fail(**it, "ERR_CONTEXT_FULL", "the shared KV cache (" + std::to_string(config_.poolCells) + " cells) is full; raise cacheSize or lower parallel", events);
        break;
      }
    }
    return;  // rebuild the batch next step without it
  }
  ClearLastLogError();
  const double t0 = NowMs();
  const int32_t rc = llama_decode(ctx_, batch);
  if (rc == 0 && promptUsed > 0) {
    const double rate = batch.n_tokens * 1000.0 / std::max(1.0, NowMs() - t0);
    promptRate_ = promptRate_ <= 0 ? rate : 0.7 * promptRate_ + 0.3 * rate;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.decodes++;
  }
  if (rc != 0) {
    // Nothing of a failed single-ubatch decode is kept by us; drop whatever llama.cpp may have stored.
    for (auto& s : sequences_) llama_memory_seq_rm(mem_, s->id, (llama_pos)s->tokens.size(), -1);
    if (stopping_) return;
    const std::string message = "llama_decode failed with code " + std::to_string(rc) + ": " + TakeLastLogError();
    for (auto& e : added) Fail(*e.a, "ERR_DECODE", message, events);
    return;
  }
  // Record the decoded tokens, then sample or score.
  for (auto& e : added) {
    Active& a = *e.a;
    if (e.kind == 2) {
      auto& label = a.labels[e.label];
      for (int32_t k = 0; k < e.count; k++) {
        label.seq->tokens.push_back(batch.token[e.first + k]);
        label.seq->cells.push_back(NewCell());
      }
      continue;
    }
    for (int32_t k = 0; k < e.count; k++) {
      const uint32_t cell = NewCell();
      a.seq->tokens.push_back(batch.token[e.first + k]);
      a.seq->cells.push_back(cell);
      for (size_t l : e.riders) {  // the riding labels' sequences hold the same cells
        Sequence& rider = *a.labels[l].seq;
        rider.tokens.push_back(batch.token[e.first + k]);
        rider.cells.push_back(cell);
        cellRefs_[cell]++;
      }
    }
    a.seq->lastUse = ++useClock_;
  }
  for (auto& e : added) {
    Active& a = *e.a;
    if (a.done) continue;
    if (e.kind == 0) {
      a.hasPending = false;
      SampleGeneration(a, e.first, events);
    } else if (e.kind == 1) {
      a.next += e.count;
      if (a.req.kind == RequestKind::Logits) {
        for (int32_t k = 0; k < e.count; k++) {
          std::memcpy(a.logits.data() + (a.next - e.count + k) * (size_t)nVocab_, llama_get_logits_ith(ctx_, e.first + k), nVocab_ * sizeof(float));
        }
      }
      if (a.next < a.req.prompt.size()) continue;
      a.tPromptDone = NowMs();
      const int32_t lastRow = e.first + e.count - 1;
      if (a.req.kind == RequestKind::Generate) {
        a.phase = Active::Generating;
        SampleGeneration(a, lastRow, events);
      } else if (a.req.kind == RequestKind::Logits) {
        Finish(a, "stop", events);
      } else {
        const float* row = llama_get_logits_ith(ctx_, lastRow);
        const float lse = LogSumExp(row, nVocab_);
        for (size_t l = 0; l < a.req.labels.size(); l++) {
          const auto& tokens = a.req.labels[l];
          if (!tokens.empty()) a.labelLogprobs[l].push_back(row[tokens[0]] - lse);
        }
        a.phase = Active::Labels;
      }
    } else {
      auto& label = a.labels[e.label];
      const auto& tokens = a.req.labels[e.label];
      for (int32_t k = 0; k < e.count; k++) {
        const float* row = llama_get_logits_ith(ctx_, e.first + k);
        a.labelLogprobs[e.label].push_back(row[tokens[label.decoded + 1]] - LogSumExp(row, nVocab_));
        label.decoded++;
      }
      if (label.decoded + 1 >= tokens.size()) ReleaseLabelSequence(label.seq);  // scored: the sequence goes to labels waiting
    }
  }
  // Classifications whose labels are all scored finish now, not after the next step's decode.
  for (auto& e : added) {
    Active& a = *e.a;
    if (a.phase != Active::Labels || a.done) continue;
    bool complete = true;
    for (size_t l = 0; l < a.labels.size(); l++) {
      if (a.labels[l].decoded + 1 < a.req.labels[l].size()) complete = false;
    }
    if (complete) Finish(a, "stop", events);
  }
}

void Engine::ReleaseLabelSequence(Sequence*& seq) {
  TrimSequence(*seq, 0);
  seq->busy = false;
  seq = nullptr;
}

void Engine::Run() {
  std::vector<EngineEvent> events;
  auto flush = [&] {
    if (events.empty()) return;
    sink_(std::move(events));
    events = {};
  };
  try {
    while (true) {
      std::vector<EngineRequest> admit;
      std::unordered_set<uint64_t> cancels;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || !pending_.empty() || !cancels_.empty() || !actives_.empty(); });
        if (stopping_) break;
        cancels.swap(cancels_);
        // waiting requests that were cancelled leave the queue at once
        for (auto it = pending_.begin(); it != pending_.end();) {
          if (cancels.count(it->id)) {
            events.push_back({EngineEvent::Done, it->id, "", "abort"});
            it = pending_.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (auto& a : actives_) {
        if (cancels.count(a->req.id)) Finish(*a, "abort", events);
      }
      actives_.remove_if([](const std::unique_ptr<Active>& a) { return a->done; });
      // Admission in FIFO order: classifications and logits do not take a generation slot (they are short and
      // run on their own sequences), so they never wait behind long replies. No iterator into pending_ is held
      // across Admit(): the mutex is released there and Submit() may grow the deque meanwhile.
      int32_t generations = 0;
      for (auto& a : actives_) generations += a->req.kind == RequestKind::Generate;
      while (true) {
        EngineRequest req;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto it = std::find_if(pending_.begin(), pending_.end(), [&](const EngineRequest& r) {
            return r.kind != RequestKind::Generate || generations < config_.parallel;
          });
          if (it == pending_.end()) break;
          req = std::move(*it);
          pending_.erase(it);
        }
        const RequestKind kind = req.kind;
        if (!Admit(req, events)) {  // no sequence id free: back to the front, retry after the next step
          std::lock_guard<std::mutex> lock(mutex_);
          pending_.push_front(std::move(req));
          break;
        }
        if (kind == RequestKind::Generate) generations++;
      }
      Step(events);
      actives_.remove_if([](const std::unique_ptr<Active>& a) { return a->done; });
      PublishStats();
      flush();
    }
  } catch (const std::exception& e) {
    // Nothing may escape this thread (std::terminate would take the process down): fail everything instead.
    for (auto& a : actives_) Fail(*a, "ERR_ENGINE", std::string("engine error: ") + e.what(), events);
  } catch (...) {
    for (auto& a : actives_) Fail(*a, "ERR_ENGINE", "engine error", events);
  }
  // Stopping (dispose) or failed: every request still known ends now.
  for (auto& a : actives_) {
    if (!a->done) Fail(*a, "ERR_DISPOSED", "the model was disposed during the request", events);
  }
  actives_.clear();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& r : pending_) events.push_back({EngineEvent::Error, r.id, "the model was disposed before the request started", "ERR_DISPOSED"});
    pending_.clear();
  }
  // Save what the prompt cache should survive a restart with (idle sequences, longest first).
  if (promptCache_ && promptCache_->persistent()) {
    std::vector<Sequence*> idle;
    for (auto& s : sequences_) if (!s->tokens.empty()) idle.push_back(s.get());
    std::sort(idle.begin(), idle.end(), [](Sequence* a, Sequence* b) { return a->tokens.size() > b->tokens.size(); });
    stopping_ = false;  // state reads do not decode; nothing to abort
    for (Sequence* s : idle) ClearSequence(*s, true);
  }
  PublishStats();
  flush();
}

}  // namespace qwen

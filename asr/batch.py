"""Many streaming sessions stepped together: one call of the streaming model for all the streams
that have features to step, instead of one call per stream.

A streaming model's step for one stream is a few small matrix products (the recipes' GRU: about
10 MFLOP per 80 ms): stepped alone, a stream costs mostly the call itself. Stacked, B streams
cost little more than one, so ``asr serve`` steps its streams in batches (:class:`Batcher`),
and each session's :class:`~asr.endpoint.Endpointer` decodes its own log-probs, finds its own
endpoints and keeps its own search, as when it runs alone.

The streams of a batch are stepped by the same number of features from states of the same
shape. Each :class:`Lane` steps the features that its stepper can step whole
(``stepper.steppable``: the PyTorch model, those that give whole output frames; an exported
graph, whole chunks) and keeps the rest for later, so the model's outputs come as early as for
the stream alone, with the same values (up to float rounding in the batched products), and the
states of streams in the same phase stack (``stepper.shapes``, ``stack``, ``split``). A
stream's transcript does not depend on the other streams, nor on whether it is batched at all.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from asr.audio import SAMPLE_RATE, StreamResampler
from asr.features import StreamingLogMel
from asr.endpoint import Event, StreamingSession
from asr.streaming import Recognizer


@dataclass(eq=False)  # a lane is itself, not its contents: a key for its stream
class Lane:
    """One stream's place in the batches: its session and the features it has not stepped yet
    (the endpointer has them all: at an endpoint, its replay holds those too)."""

    session: StreamingSession  # a Recognizer, or an asr.runtime.StreamingRecognizer
    feats: np.ndarray = field(init=False)  # (frames, n_mels)
    stepped: int = 0  # features stepped since the utterance's start
    events: list[Event] = field(default_factory=list)  # not yet taken by the caller

    def __post_init__(self) -> None:
        self.feats = np.zeros((0, self.session.endpointer.n_mels), np.float32)

    def accept_audio(self, chunk: np.ndarray) -> None:
        """Mono float32 16 kHz samples into the lane's features."""
        self.session.endpointer.audio_arrived(len(chunk))
        self._add(self.session.frontend.accept_audio(chunk))

    @staticmethod
    @torch.inference_mode()
    def accept_audio_many(lanes: list[Lane], chunks: list[torch.Tensor]) -> None:
        """:meth:`accept_audio` for many lanes, the features of all computed in one call."""
        for lane, chunk in zip(lanes, chunks):
            lane.session.endpointer.audio_arrived(len(chunk))
        feats = StreamingLogMel.accept_audio_many([lane.session.frontend.frontend for lane in lanes], chunks)
        for lane, new in zip(lanes, feats):
            lane._add(new[0].numpy())

    def _add(self, feats: np.ndarray) -> None:
        self.feats = np.concatenate([self.feats, self.session.endpointer.add_features(feats)])

    def consume(self, log_probs: np.ndarray) -> None:
        """The session decodes the log-probs ``(frames', vocab)`` of its features stepped; at an
        endpoint the replay is stepped next, from a fresh state."""
        session = self.session
        replay = session.endpointer.add_log_probs(log_probs)
        if replay is not None:
            self.feats = replay  # from the endpoint on: the features not yet stepped included
            session.state = session.stepper.initial_state()
            self.stepped = 0
        self.events += session.endpointer.take_events(last=False)

    def finish(self) -> None:
        """End of the stream: the features short of an output frame, the look-ahead, the last
        final (stepped alone); the session is then ready for a new stream."""
        session = self.session
        while len(self.feats):
            feats, self.feats = self.feats, self.feats[:0]
            log_probs, session.state = session.stepper.step(feats[None], session.state)
            self.consume(log_probs[0])
        self.events += session.finish()


@dataclass
class Stepped:
    lane: Lane
    log_probs: np.ndarray  # (frames', vocab) what the model gave for the lane's features


class Batcher:
    """Steps lanes in batches of at most ``max_batch`` (1: each stream alone, as a reference)."""

    def __init__(self, recognizer: StreamingSession, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.stepper = recognizer.stepper
        self.max_batch = max_batch

    def step(self, lanes: list[Lane]) -> list[Stepped]:
        """Step each lane by the features that give whole output frames, together with the lanes
        stepped by as many from states of the same shape, and take them off its queue; its
        session's state is the new one. The log-probs are for the caller to hand to
        :meth:`Lane.consume` (on another thread, for a slow search)."""
        groups = defaultdict(list)
        for lane in lanes:
            if frames := self.stepper.steppable(lane.stepped, len(lane.feats)):
                groups[frames, self.stepper.shapes(lane.session.state)].append(lane)
        stepped = []
        for (frames, _), group in groups.items():
            for start in range(0, len(group), self.max_batch):
                batch = group[start : start + self.max_batch]
                feats = np.stack([lane.feats[:frames] for lane in batch])
                if len(batch) == 1:
                    log_probs, state = self.stepper.step(feats, batch[0].session.state)
                    states = [state]
                else:
                    log_probs, state = self.stepper.step(feats, self.stepper.stack([lane.session.state for lane in batch]))
                    states = self.stepper.split(state)
                for i, lane in enumerate(batch):
                    lane.session.state = states[i]
                    lane.feats = lane.feats[frames:]
                    lane.stepped += frames
                    stepped.append(Stepped(lane, log_probs[i]))
        return stepped


class _ArrivalClock:
    """A session's clock. Its first reading in :meth:`~asr.endpoint.Endpointer.audio_arrived`
    stamps the chunk's arrival: when the newest frame of the chunk came off the socket, not when
    a thread got to it, so that event latencies include the time the audio waited for its step."""

    def __init__(self) -> None:
        self.arrival: float | None = None

    def __call__(self) -> float:
        arrival, self.arrival = self.arrival, None
        return time.perf_counter() if arrival is None else arrival


class _Group:
    """Streams stepped together, in a thread of their own."""

    def __init__(self, batcher: Batcher, index: int) -> None:
        self.batcher = batcher
        self.streams: set[Stream] = set()
        self.wake = asyncio.Event()  # a stream has audio, or has ended
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"asr-batch{index}")
        self.task: asyncio.Task | None = None


class Stream:
    """One stream of :class:`Streams`: audio in (:meth:`put`, :meth:`close`), events out
    (``outbox``: each :class:`~asr.streaming.Event`, then None after the last final, or the
    exception that ended it). The audio waits here, bounded in samples, until its group takes it."""

    def __init__(self, session: Recognizer, sample_rate: int, max_samples: int, group: _Group) -> None:
        self.clock = _ArrivalClock()
        session.clock = self.clock
        self.lane = Lane(session)
        self.resampler = StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self.group = group
        self.blocks: list[np.ndarray] = []
        self.samples = 0
        self.max_samples = max_samples
        self.arrival = 0.0
        self.end = False  # no more audio will come
        self.taken_end = False  # ... and all of it has been taken
        self.busy = False  # its search is running in the pool
        self.done = False  # finished, failed or dropped: nothing more to step
        self.drained = asyncio.Event()  # room for more audio
        self.outbox: asyncio.Queue = asyncio.Queue()

    def put(self, samples: np.ndarray) -> None:
        """Mono float32 samples at the stream's rate."""
        self.blocks.append(samples)
        self.samples += len(samples)
        self.arrival = time.perf_counter()
        self.group.wake.set()

    def close(self) -> None:
        """No more audio: recognise the rest, then the last finals and None."""
        self.end = True
        self.group.wake.set()

    async def wait_for_room(self) -> None:
        """Until the audio waiting is under ``max_samples`` (a client faster than real time waits here)."""
        while self.samples > self.max_samples:
            self.drained.clear()
            await self.drained.wait()

    def _take(self) -> tuple[list[np.ndarray], float, bool]:
        taken = self.blocks, self.arrival, self.end
        self.blocks, self.samples, self.taken_end = [], 0, self.end
        self.drained.set()
        return taken

    def _audio(self, blocks: list[np.ndarray], arrival: float, end: bool) -> torch.Tensor:
        """The audio taken, at 16 kHz (in the group's thread); the session's clock reads its arrival next."""
        audio = torch.from_numpy(np.concatenate(blocks)) if blocks else torch.zeros(0)
        if self.resampler is not None:
            audio = self.resampler(audio)
            if end:  # the resampler holds back its last samples for context: push them out with silence
                audio = torch.cat([audio, self.resampler(torch.zeros(2 * self.resampler.margin))])
        if len(audio):
            self.clock.arrival = arrival
        return audio

    def _send_events(self) -> None:
        events, self.lane.events = self.lane.events, []
        for event in events:
            self.outbox.put_nowait(event)

    def _end(self, err: BaseException | None = None) -> None:
        self.done = True
        if err is not None:
            print(f"asr serve: recognition failed: {err!r}", file=sys.stderr)
        self.outbox.put_nowait(err)


class Streams:
    """Streams recognised with their models stepped in batches, in ``workers`` groups of streams,
    each group stepped by a thread of its own (a new stream joins the smallest group). Whenever
    streams of a group have audio, the group takes it all and steps them together until none
    has a whole output frame left. Greedy decoding runs there too; a session with a word LM
    searches in ``pool``, while its group goes on stepping the other streams, and rejoins the
    batches when its search is done. A stream whose audio arrives faster than it is stepped is
    stepped by more at once: it catches up without holding the others. All methods are for the
    event loop's thread."""

    def __init__(self, recognizer: Recognizer, workers: int, max_batch: int, pool: ThreadPoolExecutor) -> None:
        self.groups = [_Group(Batcher(recognizer, max_batch), i) for i in range(workers)]
        self.searching = recognizer.beam_decoder is not None
        self.pool = pool

    def start(self) -> None:
        for group in self.groups:
            group.task = asyncio.create_task(self._run(group))

    def stop(self) -> None:
        for group in self.groups:
            group.task.cancel()
            group.thread.shutdown(wait=False, cancel_futures=True)

    def open(self, session: Recognizer, sample_rate: int, max_samples: int) -> Stream:
        """A new stream on ``session`` (a session of its own), whose audio comes at ``sample_rate``."""
        group = min(self.groups, key=lambda g: len(g.streams))
        stream = Stream(session, sample_rate, max_samples, group)
        group.streams.add(stream)
        return stream

    def drop(self, stream: Stream) -> None:
        """Forget the stream (its session is freed; a step or search running finishes unseen)."""
        stream.done = True
        stream.group.streams.discard(stream)

    async def _run(self, group: _Group) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await group.wake.wait()
            group.wake.clear()
            work = [(stream, stream._take()) for stream in group.streams if not stream.busy and not stream.done
                    and (stream.blocks or stream.end or len(stream.lane.feats))]
            if not work:
                continue
            try:
                to_search, finished, failed = await loop.run_in_executor(group.thread, self._step, group, work)
            except Exception as err:  # a bug in the batched step itself: its streams cannot go on
                for stream, _ in work:
                    stream._end(err)
                continue
            for stream, _ in work:
                stream._send_events()
            for stream in finished:
                stream._end()
            for stream, err in failed:
                stream._end(err)
            for stream, log_probs in to_search:
                stream.busy = True
                job = (stream.lane.finish,) if log_probs is None else (stream.lane.consume, log_probs)
                loop.run_in_executor(self.pool, *job).add_done_callback(
                    lambda future, stream=stream, finish=log_probs is None: self._searched(stream, future, finish))

    def _step(self, group: _Group, work: list) -> tuple[list, list, list]:
        """In the group's thread: the audio taken into the lanes, then batched steps until no lane
        has a whole output frame to step. Greedy: decoded here, and ended streams finished.
        Returns (stream, log-probs) to search, or (stream, None) to finish with the search; the
        streams finished; (stream, exception) for those that failed."""
        lanes, arrived, chunks, failed = {}, [], [], []
        for stream, taken in work:
            try:
                audio = stream._audio(*taken)
            except Exception as err:
                failed.append((stream, err))
                continue
            lanes[stream.lane] = stream
            if len(audio):
                arrived.append(stream.lane)
                chunks.append(audio)
        if arrived:
            Lane.accept_audio_many(arrived, chunks)
        to_search, finished = [], []
        while stepped := group.batcher.step(list(lanes)):
            for s in stepped:
                if self.searching:  # not stepped again before its search is done
                    to_search.append((lanes.pop(s.lane), s.log_probs))
                    continue
                try:
                    s.lane.consume(s.log_probs)
                except Exception as err:
                    failed.append((lanes.pop(s.lane), err))
        for lane, stream in lanes.items():
            if stream.taken_end and self.searching:
                to_search.append((stream, None))
            elif stream.taken_end:
                try:
                    lane.finish()
                    finished.append(stream)
                except Exception as err:
                    failed.append((stream, err))
        return to_search, finished, failed

    def _searched(self, stream: Stream, future, finish: bool) -> None:
        """A search (or the finish) with the word LM is done: its events out, the stream back in the batches."""
        stream.busy = False
        if stream.done or future.cancelled():  # dropped meanwhile, or the server is stopping
            return
        if (err := future.exception()) is not None:
            stream._end(err)
            return
        stream._send_events()
        if finish:
            stream._end()
        else:
            stream.group.wake.set()

//! The expectation queue: for every frontend message forwarded to the server, which backend
//! replies may come, in order. Every reply the server sends is matched here before tokengate
//! acts on it or forwards it; a reply that does not fit ends the session (it is never
//! forwarded, and never attributed to a guessed statement).
//!
//! Standalone and pure (no I/O, no policy): [`ProtocolState`] is generic over the data the
//! caller attaches to each request, and is unit-tested on its own. Modelled on pgdog's
//! `ProtocolState`, with PostgreSQL's rules from `postgres.c` and the protocol chapter:
//!
//! - Replies come in the order requests were sent. Parse → `1`, Bind → `2`, Close → `3`,
//!   Describe statement → `t` then `T`/`n`, Describe portal → `T`/`n`, Execute → `D`* then
//!   `C`/`s`/`I` (or a COPY: `G`/`H`), Sync → `Z`, FunctionCall → `V` then `Z`, simple Query →
//!   per statement `T D* C` | `C` | `I` | COPY, then `Z`. Flush and CopyData get no reply.
//! - After an ErrorResponse to an extended-protocol message the server skips every message until
//!   Sync (Query and FunctionCall included); an error in a simple Query or FunctionCall ends it,
//!   and `Z` follows.
//! - While COPY FROM STDIN runs, the server ignores Sync and Flush (tokio-postgres' `copy_in`
//!   sends a Sync right after the Execute); CopyDone ends the COPY with `C`, CopyFail with `E`.
//!   CopyData, CopyDone and CopyFail outside COPY are dropped. After an error during COPY, a
//!   Sync the client sent inside the COPY may or may not be answered (it depends on when the
//!   server noticed the error), so those answers are accepted as spares.
//! - NoticeResponse, ParameterStatus and NotificationResponse may come at any time; an
//!   ErrorResponse with nothing pending may only be FATAL (the server is ending the session).
use std::collections::VecDeque;

/// Backend message tags (the server's replies), named in one place.
pub use crate::wire::backend as tag;

/// A frontend message that the server answers (or, for CopyDone/CopyFail, that ends a COPY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Query,
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    FunctionCall,
    CopyDone,
    CopyFail,
}

impl Request {
    /// Messages after which an error makes the server skip until Sync.
    fn extended(self) -> bool {
        matches!(
            self,
            Request::Parse
                | Request::Bind
                | Request::DescribeStatement
                | Request::DescribePortal
                | Request::Execute
                | Request::Close
        )
    }
}

/// Where a request's reply stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Nothing received for it yet.
    Start,
    /// A simple Query between two statements' results (at least one has completed).
    Between,
    /// Describe statement: ParameterDescription seen, `T` or `n` next.
    Described,
    /// Rows may follow (after `T` in a Query, or from the start of an Execute).
    Rows,
    /// COPY FROM STDIN: the server waits for the client's CopyDone or CopyFail.
    CopyIn,
    /// COPY TO STDOUT: CopyData until CopyDone.
    CopyOut,
    /// COPY TO STDOUT ended; its CommandComplete follows.
    CopyOutDone,
    /// FunctionCallResponse seen (FunctionCall), or an error ended a Query/FunctionCall: `Z` next.
    Ending,
}

/// The outcome of [`ProtocolState::find_recent`].
#[derive(Debug, PartialEq, Eq)]
pub enum Found<R> {
    Yes(R),
    No,
    Unsure,
}

/// A reply that does not fit what was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server sent {} while {expected}", describe(*tag))]
pub struct Mismatch {
    pub tag: u8,
    pub expected: String,
}

fn describe(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("message '{}'", tag as char)
    } else {
        format!("message 0x{tag:02x}")
    }
}

/// What one reply means.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// Not tied to a request: NoticeResponse, ParameterStatus, NotificationResponse, or a
    /// FATAL error with nothing pending.
    Async,
    /// Part of the front request's reply; more follows ([`ProtocolState::front_mut`]).
    Part,
    /// The reply to this request is complete (its last message was this one).
    Done(T),
}

/// The outcome of one reply: requests the server skipped (they never ran; their data is
/// handed back so nothing is recorded for them), and the event.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<T> {
    pub skipped: Vec<T>,
    pub event: Event<T>,
}

struct Entry<T> {
    request: Request,
    stage: Stage,
    data: T,
    /// Its place in the order requests were sent ([`ProtocolState::next_seq`]).
    seq: u64,
}

/// The expectation queue of one session.
pub struct ProtocolState<T> {
    queue: VecDeque<Entry<T>>,
    /// An extended-protocol error: the server skips messages until Sync.
    skipping: bool,
    /// Sync answers that may or may not come (Syncs sent inside a COPY that failed).
    spare_syncs: usize,
    /// The sequence number the next request sent gets.
    next_seq: u64,
}

impl<T> Default for ProtocolState<T> {
    fn default() -> Self {
        ProtocolState {
            queue: VecDeque::new(),
            skipping: false,
            spare_syncs: 0,
            next_seq: 0,
        }
    }
}

impl<T> ProtocolState<T> {
    /// Records a request sent to the server.
    pub fn sent(&mut self, request: Request, data: T) {
        self.queue.push_back(Entry {
            request,
            stage: Stage::Start,
            data,
            seq: self.next_seq,
        });
        self.next_seq += 1;
    }

    /// The sequence number the next request sent will get (requests are numbered in the
    /// order they are sent).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence number of the oldest request still pending.
    pub fn front_seq(&self) -> Option<u64> {
        self.queue.front().map(|e| e.seq)
    }

    /// Nothing is pending: every request sent has been answered.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// The request whose reply is arriving (or will arrive next).
    pub fn front(&self) -> Option<(Request, Stage, &T)> {
        self.queue.front().map(|e| (e.request, e.stage, &e.data))
    }

    /// The first `Some` of `f` over the most recent `limit` pending requests, newest first;
    /// [`Found::Unsure`] when the queue is longer than `limit` and nothing was found (the
    /// caller cannot be sure, so it refuses).
    pub fn find_recent<R>(&self, limit: usize, mut f: impl FnMut(&T) -> Option<R>) -> Found<R> {
        for e in self.queue.iter().rev().take(limit) {
            if let Some(r) = f(&e.data) {
                return Found::Yes(r);
            }
        }
        if self.queue.len() > limit {
            Found::Unsure
        } else {
            Found::No
        }
    }

    /// Pops the requests the server will skip or drop (so the front is the one the next
    /// reply answers) and hands back their data.
    pub fn settle_front(&mut self) -> Vec<T> {
        let mut skipped = Vec::new();
        self.settle(&mut skipped);
        skipped
    }

    pub fn front_mut(&mut self) -> Option<&mut T> {
        self.queue.front_mut().map(|e| &mut e.data)
    }

    /// Matches one reply. `fatal` tells, for an ErrorResponse, whether its severity ends the
    /// session. On `Err` nothing may be forwarded: the session must end.
    pub fn reply(&mut self, tag: u8, fatal: bool) -> Result<Step<T>, Mismatch> {
        use tag::*;
        let mut skipped = Vec::new();
        if matches!(
            tag,
            NOTICE_RESPONSE | PARAMETER_STATUS | NOTIFICATION_RESPONSE
        ) {
            return Ok(Step {
                skipped,
                event: Event::Async,
            });
        }
        self.settle(&mut skipped);
        if tag != READY_FOR_QUERY {
            // The server has moved on: Syncs from a failed COPY that were not answered by now
            // never will be.
            self.spare_syncs = 0;
        }
        let Some(front) = self.queue.front_mut() else {
            if tag == READY_FOR_QUERY && self.spare_syncs > 0 {
                self.spare_syncs -= 1;
                return Ok(Step {
                    skipped,
                    event: Event::Async,
                });
            }
            if tag == ERROR_RESPONSE && fatal {
                return Ok(Step {
                    skipped,
                    event: Event::Async,
                });
            }
            return Err(Mismatch {
                tag,
                expected: "no reply was pending".into(),
            });
        };
        if tag == READY_FOR_QUERY
            && self.spare_syncs > 0
            && !matches!(front.request, Request::Sync)
            && !matches!(front.stage, Stage::Ending | Stage::Between)
        {
            self.spare_syncs -= 1;
            return Ok(Step {
                skipped,
                event: Event::Async,
            });
        }
        let request = front.request;
        let stage = front.stage;
        let mismatch = || Mismatch {
            tag,
            expected: format!("waiting for the reply to {request:?} ({stage:?})"),
        };
        // Errors first: they can end any request at any stage.
        if tag == ERROR_RESPONSE {
            return Ok(Step {
                event: self.error(request, stage),
                skipped,
            });
        }
        let next: Option<Stage> = match (request, stage, tag) {
            (Request::Parse, Stage::Start, PARSE_COMPLETE)
            | (Request::Bind, Stage::Start, BIND_COMPLETE)
            | (Request::Close, Stage::Start, CLOSE_COMPLETE)
            | (Request::Sync, Stage::Start, READY_FOR_QUERY)
            | (Request::DescribeStatement, Stage::Described, ROW_DESCRIPTION | NO_DATA)
            | (Request::DescribePortal, Stage::Start, ROW_DESCRIPTION | NO_DATA)
            | (Request::Execute, Stage::Start | Stage::Rows, COMMAND_COMPLETE)
            | (Request::Execute, Stage::Start | Stage::Rows, PORTAL_SUSPENDED)
            | (Request::Execute, Stage::Start, EMPTY_QUERY_RESPONSE)
            | (Request::Execute, Stage::CopyOutDone, COMMAND_COMPLETE)
            | (Request::Query, Stage::Between | Stage::Ending, READY_FOR_QUERY)
            | (Request::FunctionCall, Stage::Ending, READY_FOR_QUERY) => None,
            (Request::DescribeStatement, Stage::Start, PARAMETER_DESCRIPTION) => {
                Some(Stage::Described)
            }
            (Request::Execute, Stage::Start | Stage::Rows, DATA_ROW) => Some(Stage::Rows),
            (Request::Query, Stage::Start | Stage::Between, ROW_DESCRIPTION) => Some(Stage::Rows),
            (Request::Query, Stage::Rows, DATA_ROW) => Some(Stage::Rows),
            (Request::Query, Stage::Start | Stage::Between | Stage::Rows, COMMAND_COMPLETE)
            | (Request::Query, Stage::Start, EMPTY_QUERY_RESPONSE)
            | (Request::Query, Stage::CopyOutDone, COMMAND_COMPLETE) => Some(Stage::Between),
            (Request::Query, Stage::Start | Stage::Between, COPY_IN_RESPONSE)
            | (Request::Execute, Stage::Start, COPY_IN_RESPONSE) => Some(Stage::CopyIn),
            (Request::Query, Stage::Start | Stage::Between, COPY_OUT_RESPONSE)
            | (Request::Execute, Stage::Start, COPY_OUT_RESPONSE) => Some(Stage::CopyOut),
            (Request::Query | Request::Execute, Stage::CopyOut, COPY_DATA) => Some(Stage::CopyOut),
            (Request::Query | Request::Execute, Stage::CopyOut, COPY_DONE) => {
                Some(Stage::CopyOutDone)
            }
            (Request::Query | Request::Execute, Stage::CopyIn, COMMAND_COMPLETE) => {
                // Only the client's CopyDone ends a COPY FROM STDIN with success.
                if !self.end_copy_in(Request::CopyDone) {
                    return Err(mismatch());
                }
                if request == Request::Query {
                    Some(Stage::Between)
                } else {
                    None
                }
            }
            (Request::FunctionCall, Stage::Start, FUNCTION_CALL_RESPONSE) => Some(Stage::Ending),
            _ => return Err(mismatch()),
        };
        let event = match next {
            Some(stage) => {
                if let Some(front) = self.queue.front_mut() {
                    front.stage = stage;
                }
                Event::Part
            }
            None => match self.queue.pop_front() {
                Some(e) => Event::Done(e.data),
                None => return Err(mismatch()),
            },
        };
        Ok(Step { skipped, event })
    }

    /// Pops the requests at the front that get no reply in the current state.
    fn settle(&mut self, skipped: &mut Vec<T>) {
        while let Some(front) = self.queue.front() {
            if front.stage != Stage::Start {
                break;
            }
            let drop = if self.skipping {
                front.request != Request::Sync
            } else {
                // Outside COPY, CopyDone and CopyFail are dropped by the server.
                matches!(front.request, Request::CopyDone | Request::CopyFail)
            };
            if !drop {
                break;
            }
            if let Some(e) = self.queue.pop_front() {
                skipped.push(e.data);
            }
        }
    }

    /// The client's end of a COPY FROM STDIN, after the front request: Syncs before it were
    /// ignored by the server. Returns false when the next non-Sync request is not `end`.
    fn end_copy_in(&mut self, end: Request) -> bool {
        let mut i = 1;
        while let Some(e) = self.queue.get(i) {
            match e.request {
                Request::Sync => i += 1,
                r if r == end => {
                    // Remove the ignored Syncs and the CopyDone/CopyFail itself.
                    for _ in 1..=i {
                        self.queue.remove(1);
                    }
                    return true;
                }
                _ => return false,
            }
        }
        false
    }

    /// An ErrorResponse to the front request.
    fn error(&mut self, request: Request, stage: Stage) -> Event<T> {
        if stage == Stage::CopyIn {
            // Syncs the client sent inside the COPY may have been read before the error
            // (ignored) or after it (answered): they become spares.
            let mut i = 1;
            let mut syncs = 0;
            let mut end = None;
            while let Some(e) = self.queue.get(i) {
                match e.request {
                    Request::Sync => syncs += 1,
                    Request::CopyDone | Request::CopyFail => {
                        end = Some(i);
                        break;
                    }
                    _ => break,
                }
                i += 1;
            }
            match end {
                Some(end) => {
                    for _ in 1..=end {
                        self.queue.remove(1);
                    }
                    self.spare_syncs += syncs;
                }
                // The client has not ended the COPY (yet): its CopyDone/CopyFail will be
                // dropped by the server; the Syncs before it may still be answered.
                None => {
                    let mut j = 1;
                    while j < self.queue.len() && self.queue[j].request == Request::Sync {
                        j += 1;
                    }
                    for _ in 1..j {
                        self.queue.remove(1);
                    }
                    self.spare_syncs += j - 1;
                }
            }
        }
        match request {
            Request::Query | Request::FunctionCall => {
                if let Some(front) = self.queue.front_mut() {
                    front.stage = Stage::Ending;
                }
                Event::Part
            }
            _ => {
                if request.extended() {
                    self.skipping = true;
                }
                match self.queue.pop_front() {
                    Some(e) => {
                        if e.request == Request::Sync {
                            // An error answering a Sync (e.g. a failed COMMIT of an implicit
                            // transaction): the Z still follows.
                            self.queue.push_front(Entry {
                                request: Request::Sync,
                                stage: Stage::Start,
                                data: e.data,
                                seq: e.seq,
                            });
                            return Event::Part;
                        }
                        Event::Done(e.data)
                    }
                    None => Event::Async,
                }
            }
        }
    }

    /// After `Z` answered a Sync, the skip mode ends. Call with the Done event's request.
    pub fn synced(&mut self) {
        self.skipping = false;
    }

    /// Whether the server is skipping until Sync.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// The request at the front (for callers that need to know what a Done answered).
    pub fn front_request(&self) -> Option<Request> {
        self.queue.front().map(|e| e.request)
    }
}

#[cfg(test)]
mod tests {
    use super::tag::*;
    use super::*;

    /// Feeds replies; returns the data of every request completed or skipped, in order, with
    /// a marker.
    fn run(
        state: &mut ProtocolState<&'static str>,
        replies: &[u8],
    ) -> Result<Vec<String>, Mismatch> {
        let mut out = Vec::new();
        for &t in replies {
            let step = state.reply(t, false)?;
            for s in step.skipped {
                out.push(format!("skip {s}"));
            }
            if let Event::Done(d) = step.event {
                if t == READY_FOR_QUERY {
                    state.synced();
                }
                out.push(d.to_string());
            }
        }
        Ok(out)
    }

    #[test]
    fn extended_round_trip() {
        let mut s = ProtocolState::default();
        s.sent(Request::Parse, "parse");
        s.sent(Request::DescribeStatement, "describe");
        s.sent(Request::Bind, "bind");
        s.sent(Request::Execute, "execute");
        s.sent(Request::Close, "close");
        s.sent(Request::Sync, "sync");
        let done = run(&mut s, b"1tT2DDDC3Z").unwrap();
        assert_eq!(
            done,
            ["parse", "describe", "bind", "execute", "close", "sync"]
        );
        assert!(s.idle());
    }

    #[test]
    fn simple_query_with_several_statements() {
        let mut s = ProtocolState::default();
        s.sent(Request::Query, "q");
        assert_eq!(run(&mut s, b"TDDCCTCSNZ").unwrap(), ["q"]);
        s.sent(Request::Query, "empty");
        assert_eq!(run(&mut s, b"IZ").unwrap(), ["empty"]);
        // Rows without a description are not a Query's reply.
        s.sent(Request::Query, "q");
        assert!(run(&mut s, b"D").is_err());
    }

    #[test]
    fn error_in_extended_skips_until_sync() {
        let mut s = ProtocolState::default();
        for (r, d) in [
            (Request::Parse, "p1"),
            (Request::Bind, "b1"),
            (Request::Execute, "e1"),
            (Request::Query, "q"),
            (Request::Sync, "s1"),
            (Request::Parse, "p2"),
            (Request::Sync, "s2"),
        ] {
            s.sent(r, d);
        }
        let done = run(&mut s, b"E").unwrap();
        assert_eq!(done, ["p1"]);
        assert!(s.skipping());
        // Rows now cannot belong to the skipped Execute.
        let mut t = ProtocolState::default();
        t.sent(Request::Parse, "p");
        t.sent(Request::Execute, "e");
        t.sent(Request::Sync, "s");
        run(&mut t, b"E").unwrap();
        assert!(run(&mut t, b"D").is_err());
        let done = run(&mut s, b"Z1Z").unwrap();
        assert_eq!(done, ["skip b1", "skip e1", "skip q", "s1", "p2", "s2"]);
    }

    #[test]
    fn error_in_simple_query_ends_it() {
        let mut s = ProtocolState::default();
        s.sent(Request::Query, "q");
        s.sent(Request::Query, "q2");
        assert_eq!(run(&mut s, b"TDEZ").unwrap(), ["q"]);
        // After an error, only Z may come for that Query.
        s.sent(Request::Query, "q3");
        assert_eq!(run(&mut s, b"CZ").unwrap(), ["q2"]);
        assert!(run(&mut s, b"EC").is_err());
    }

    #[test]
    fn copy_in_sync_is_ignored_by_the_server() {
        // tokio-postgres copy_in: Bind, Execute, Sync, CopyData..., CopyDone, Sync.
        let mut s = ProtocolState::default();
        s.sent(Request::Bind, "bind");
        s.sent(Request::Execute, "copy");
        s.sent(Request::Sync, "ignored sync");
        assert_eq!(run(&mut s, b"2G").unwrap(), ["bind"]);
        s.sent(Request::CopyDone, "done");
        s.sent(Request::Sync, "sync");
        assert_eq!(run(&mut s, b"C").unwrap(), ["copy"]);
        assert_eq!(run(&mut s, b"Z").unwrap(), ["sync"]);
        assert!(s.idle());
        // The statements after it get their own replies.
        s.sent(Request::Query, "select");
        assert_eq!(run(&mut s, b"TDCZ").unwrap(), ["select"]);
    }

    #[test]
    fn copy_in_complete_needs_the_clients_copy_done() {
        let mut s = ProtocolState::default();
        s.sent(Request::Query, "copy");
        assert!(run(&mut s, b"G").unwrap().is_empty());
        // No CopyDone sent yet: a CommandComplete cannot be the COPY's.
        assert!(run(&mut s, b"C").is_err());
        let mut s = ProtocolState::default();
        s.sent(Request::Query, "copy");
        s.sent(Request::CopyFail, "fail");
        run(&mut s, b"G").unwrap();
        assert!(run(&mut s, b"C").is_err());
        let mut s = ProtocolState::default();
        s.sent(Request::Query, "copy");
        s.sent(Request::CopyFail, "fail");
        assert_eq!(run(&mut s, b"GEZ").unwrap(), ["copy"]);
        assert!(s.idle());
    }

    #[test]
    fn failed_copy_makes_its_syncs_spares() {
        // The error came before the server read the Sync: it is answered...
        for replies in [&b"2GEZZ"[..], b"2GEZ"] {
            let mut s = ProtocolState::default();
            s.sent(Request::Bind, "bind");
            s.sent(Request::Execute, "copy");
            s.sent(Request::Sync, "maybe");
            s.sent(Request::CopyDone, "done");
            s.sent(Request::Sync, "sync");
            s.sent(Request::Query, "next");
            let mut done = run(&mut s, replies).unwrap();
            done.extend(run(&mut s, b"TDCZ").unwrap());
            assert_eq!(done, ["bind", "copy", "sync", "next"], "{replies:?}");
            assert!(s.idle());
        }
    }

    #[test]
    fn copy_out_in_query_and_execute() {
        let mut s = ProtocolState::default();
        s.sent(Request::Query, "q");
        assert_eq!(run(&mut s, b"HdddcCZ").unwrap(), ["q"]);
        s.sent(Request::Execute, "e");
        s.sent(Request::Sync, "s");
        assert_eq!(run(&mut s, b"HddcCZ").unwrap(), ["e", "s"]);
        s.sent(Request::Query, "q");
        assert!(run(&mut s, b"HdD").is_err());
    }

    #[test]
    fn async_messages_come_at_any_time() {
        let mut s: ProtocolState<&str> = ProtocolState::default();
        assert_eq!(run(&mut s, b"NSA").unwrap(), Vec::<String>::new());
        assert!(s.reply(ERROR_RESPONSE, true).is_ok());
        assert!(s.reply(ERROR_RESPONSE, false).is_err());
        assert!(s.reply(DATA_ROW, false).is_err());
        assert!(s.reply(READY_FOR_QUERY, false).is_err());
    }

    #[test]
    fn every_other_code_is_a_mismatch() {
        for t in [
            AUTHENTICATION,
            BACKEND_KEY_DATA,
            NEGOTIATE_PROTOCOL_VERSION,
            COPY_BOTH_RESPONSE,
            b'x',
            0,
        ] {
            let mut s = ProtocolState::default();
            s.sent(Request::Query, "q");
            assert!(s.reply(t, false).is_err(), "{t}");
        }
        let mut s = ProtocolState::default();
        s.sent(Request::Parse, "p");
        assert!(run(&mut s, b"2").is_err());
        let mut s = ProtocolState::default();
        s.sent(Request::Execute, "e");
        assert!(run(&mut s, b"T").is_err());
    }

    #[test]
    fn function_call_and_describe_portal() {
        let mut s = ProtocolState::default();
        s.sent(Request::FunctionCall, "f");
        assert_eq!(run(&mut s, b"VZ").unwrap(), ["f"]);
        s.sent(Request::FunctionCall, "f");
        assert_eq!(run(&mut s, b"EZ").unwrap(), ["f"]);
        s.sent(Request::DescribePortal, "d");
        s.sent(Request::DescribePortal, "d2");
        assert_eq!(run(&mut s, b"nT").unwrap(), ["d", "d2"]);
        s.sent(Request::Execute, "e");
        assert_eq!(run(&mut s, b"DDs").unwrap(), ["e"]);
        s.sent(Request::Execute, "empty");
        assert_eq!(run(&mut s, b"I").unwrap(), ["empty"]);
    }

    #[test]
    fn recent_lookups_are_bounded() {
        let mut s = ProtocolState::default();
        for i in 0..10 {
            s.sent(Request::Parse, i);
        }
        assert_eq!(s.find_recent(3, |d| (*d == 8).then_some(*d)), Found::Yes(8));
        assert_eq!(s.find_recent(3, |d| (*d == 2).then_some(*d)), Found::Unsure);
        assert_eq!(s.find_recent(20, |d| (*d == 42).then_some(*d)), Found::No);
    }

    #[test]
    fn stray_copy_messages_are_dropped_outside_copy() {
        let mut s = ProtocolState::default();
        s.sent(Request::CopyDone, "stray");
        s.sent(Request::Query, "q");
        assert_eq!(run(&mut s, b"CZ").unwrap(), ["skip stray", "q"]);
    }
}

// Package qgatest runs a fake QEMU guest agent on a unix socket, standing
// in for the host end of a guest's agent channel in tests.
//
// The fake speaks the agent's wire protocol: newline-terminated JSON
// requests, a 0xff byte resetting its parser, guest-sync-delimited
// answered with a 0xff sentinel before the reply. It keeps a freeze state
// (guest-fsfreeze-freeze, -thaw, -status), answers guest-ping and
// guest-sync, and records every command. Faults are queued per command
// with Next: a delayed reply, an error reply, a dropped connection. Stale
// data can be written at the start of every connection, as a previous
// client may have left in the channel.
//
// Like QEMU's chardev socket it serves one connection at a time.
package qgatest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Options configure a Server.
type Options struct {
	// Filesystems is how many filesystems freeze and thaw report.
	Filesystems int
	// Stale is written at the start of every connection, before any
	// reply: data an earlier client left unread in the channel.
	Stale []byte
	// OnCommand, when set, is called with each command's name before the
	// command runs (after a queued fault's delay; not for dropped or
	// failed ones), on the server's goroutine: a test can look at the
	// world as the agent sees it at that moment.
	OnCommand func(command string)
}

// ErrorReply is an error the fake answers with.
type ErrorReply struct {
	// Class is the error class, e.g. "GenericError".
	Class string `json:"class"`
	// Desc is the description.
	Desc string `json:"desc"`
}

// Reply is a fault for one future command, queued with Next.
type Reply struct {
	// Delay holds the answer (or the drop) back this long.
	Delay time.Duration
	// Error answers with this error instead of running the command.
	Error *ErrorReply
	// Drop closes the connection instead of answering; the command does
	// not run.
	Drop bool
}

// Server is a fake guest agent listening on a unix socket.
type Server struct {
	path string
	opts Options
	ln   net.Listener
	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	mu          sync.Mutex
	conn        net.Conn
	frozen      bool
	calls       []string
	next        map[string][]Reply
	connections int
}

// Start listens on the unix socket path and serves until Close.
func Start(path string, opts Options) (*Server, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("qgatest: listen on %s: %w", path, err)
	}
	s := &Server{path: path, opts: opts, ln: ln, done: make(chan struct{}), next: map[string][]Reply{}}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

// Next queues r for the next arrival of command; faults for one command
// are used in the order queued.
func (s *Server) Next(command string, r Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next[command] = append(s.next[command], r)
}

// Calls returns every command received so far, in order, including
// guest-sync-delimited and commands answered with a fault.
func (s *Server) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// Count returns how many times command was received.
func (s *Server) Count(command string) int {
	n := 0
	for _, c := range s.Calls() {
		if c == command {
			n++
		}
	}
	return n
}

// Frozen reports whether the fake's filesystems are frozen.
func (s *Server) Frozen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.frozen
}

// Connections returns how many connections the fake has accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// Close stops listening, closes the current connection and waits for the
// server's goroutine. It is safe to call more than once.
func (s *Server) Close() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	close(s.done)
	err := s.ln.Close()
	s.mu.Lock()
	if s.conn != nil {
		s.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("qgatest: close %s: %w", s.path, err)
	}
	return nil
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		select {
		case <-s.done:
			s.mu.Unlock()
			conn.Close()
			return
		default:
		}
		s.conn = conn
		s.connections++
		s.mu.Unlock()
		s.handle(conn)
		conn.Close()
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
	}
}

// request is one command as the agent receives it.
type request struct {
	Execute   string `json:"execute"`
	Arguments struct {
		ID *int64 `json:"id"`
	} `json:"arguments"`
}

// handle serves one connection until it breaks or a Drop fault closes it.
func (s *Server) handle(conn net.Conn) {
	if len(s.opts.Stale) > 0 {
		if _, err := conn.Write(s.opts.Stale); err != nil {
			return
		}
	}
	rd := bufio.NewReader(conn)
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			return
		}
		// 0xff resets the parser: only what follows the last one counts.
		if i := bytes.LastIndexByte(line, 0xff); i >= 0 {
			line = line[i+1:]
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil || req.Execute == "" {
			if !write(conn, errorReply("GenericError", "invalid request")) {
				return
			}
			continue
		}
		out, ok := s.answer(req)
		if !ok {
			return
		}
		if !write(conn, out) {
			return
		}
	}
}

// answer records req, applies its queued fault and runs it. ok is false
// when the connection must be dropped.
func (s *Server) answer(req request) (out []byte, ok bool) {
	s.mu.Lock()
	s.calls = append(s.calls, req.Execute)
	var fault Reply
	if q := s.next[req.Execute]; len(q) > 0 {
		fault, s.next[req.Execute] = q[0], q[1:]
	}
	s.mu.Unlock()
	if fault.Delay > 0 {
		select {
		case <-time.After(fault.Delay):
		case <-s.done:
			return nil, false
		}
	}
	if fault.Drop {
		return nil, false
	}
	if fault.Error != nil {
		return errorReply(fault.Error.Class, fault.Error.Desc), true
	}
	if s.opts.OnCommand != nil {
		s.opts.OnCommand(req.Execute)
	}
	return s.run(req), true
}

// run executes one command against the fake's state.
func (s *Server) run(req request) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.Execute {
	case "guest-sync-delimited", "guest-sync":
		if req.Arguments.ID == nil {
			return errorReply("GenericError", "parameter 'id' is missing")
		}
		out := returnReply(*req.Arguments.ID)
		if req.Execute == "guest-sync-delimited" {
			out = append([]byte{0xff}, out...)
		}
		return out
	case "guest-ping":
		return returnReply(struct{}{})
	case "guest-fsfreeze-status":
		if s.frozen {
			return returnReply("frozen")
		}
		return returnReply("thawed")
	case "guest-fsfreeze-freeze":
		if s.frozen {
			return errorReply("CommandNotFound", "guest-fsfreeze-freeze is disabled while filesystems are frozen")
		}
		s.frozen = true
		return returnReply(s.opts.Filesystems)
	case "guest-fsfreeze-thaw":
		if !s.frozen {
			return returnReply(0)
		}
		s.frozen = false
		return returnReply(s.opts.Filesystems)
	}
	return errorReply("CommandNotFound", fmt.Sprintf("command %s not found", req.Execute))
}

func returnReply(v any) []byte {
	b, _ := json.Marshal(struct {
		Return any `json:"return"`
	}{v})
	return append(b, '\n')
}

func errorReply(class, desc string) []byte {
	b, _ := json.Marshal(struct {
		Error ErrorReply `json:"error"`
	}{ErrorReply{class, desc}})
	return append(b, '\n')
}

func write(conn net.Conn, b []byte) bool {
	_, err := conn.Write(b)
	return err == nil
}

package qmp_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// scriptServer is a small scripted QMP server for unit tests: each accepted
// connection runs script in its own goroutine.
type scriptServer struct {
	t    *testing.T
	addr string // as given to qmp.Dial
	ln   net.Listener

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
	n     int // connections accepted so far
}

// newScriptServer listens on a unix socket in a temporary directory.
func newScriptServer(t *testing.T, script func(s *serverConn)) *scriptServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen %s: %v", path, err)
	}
	return startScriptServer(t, ln, "unix:"+path, script)
}

// newTCPScriptServer listens on a loopback tcp port.
func newTCPScriptServer(t *testing.T, script func(s *serverConn)) *scriptServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen tcp: %v", err)
	}
	return startScriptServer(t, ln, "tcp:"+ln.Addr().String(), script)
}

func startScriptServer(t *testing.T, ln net.Listener, addr string, script func(s *serverConn)) *scriptServer {
	srv := &scriptServer{t: t, addr: addr, ln: ln}
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			srv.mu.Lock()
			srv.conns = append(srv.conns, conn)
			srv.n++
			index := srv.n
			srv.mu.Unlock()
			srv.wg.Add(1)
			go func() {
				defer srv.wg.Done()
				defer conn.Close()
				script(&serverConn{t: t, conn: conn, Index: index})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		srv.mu.Lock()
		for _, c := range srv.conns {
			c.Close()
		}
		srv.mu.Unlock()
		srv.wg.Wait()
	})
	return srv
}

// serverConn is the server side of one connection.
type serverConn struct {
	t *testing.T
	// Index counts connections from 1.
	Index int
	conn  net.Conn
	buf   []byte
	fds   []int
	wmu   sync.Mutex
}

// request is one request as the server received it.
type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
	// FDs received (SCM_RIGHTS) with the bytes of this request.
	FDs []int `json:"-"`
}

// read returns the next request; fds received with its bytes are attached.
// Like QEMU it parses a stream of JSON values, not lines (go-qemu sends no
// newline).
func (s *serverConn) read() (request, error) {
	for {
		// Only try to decode once the buffered bytes could end a value.
		if t := bytes.TrimSpace(s.buf); len(t) > 0 && t[len(t)-1] == '}' {
			dec := json.NewDecoder(bytes.NewReader(s.buf))
			var raw json.RawMessage
			err := dec.Decode(&raw)
			if err == nil {
				s.buf = s.buf[dec.InputOffset():]
				var r request
				if err := json.Unmarshal(raw, &r); err != nil {
					return r, fmt.Errorf("server: bad request %q: %w", raw, err)
				}
				r.FDs, s.fds = s.fds, nil
				return r, nil
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				return request{}, fmt.Errorf("server: bad request stream: %w", err)
			}
		}
		tmp := make([]byte, 64<<10)
		var n int
		var err error
		if uc, ok := s.conn.(*net.UnixConn); ok {
			oob := make([]byte, syscall.CmsgSpace(16*4))
			var oobn int
			n, oobn, _, _, err = uc.ReadMsgUnix(tmp, oob)
			if oobn > 0 {
				msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
				if perr != nil {
					return request{}, perr
				}
				for _, m := range msgs {
					fds, perr := syscall.ParseUnixRights(&m)
					if perr != nil {
						return request{}, perr
					}
					s.fds = append(s.fds, fds...)
				}
			}
		} else {
			n, err = s.conn.Read(tmp)
		}
		if n > 0 {
			s.buf = append(s.buf, tmp[:n]...)
		}
		if err != nil {
			return request{}, err
		}
	}
}

// mustRead reads a request and checks its command name; on failure it
// reports the error and returns false.
func (s *serverConn) mustRead(execute string) (request, bool) {
	r, err := s.read()
	if err != nil {
		s.t.Errorf("server: waiting for %s: %v", execute, err)
		return r, false
	}
	if execute != "" && r.Execute != execute {
		s.t.Errorf("server: got %q, want %q", r.Execute, execute)
		return r, false
	}
	return r, true
}

// send writes v as one line, QEMU style ("\r\n").
func (s *serverConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err = s.conn.Write(append(b, '\r', '\n'))
	return err
}

func (s *serverConn) greet() error {
	return s.send(map[string]any{"QMP": map[string]any{
		"version": map[string]any{
			"qemu":    map[string]int{"major": 7, "minor": 2, "micro": 22},
			"package": "test build",
		},
		"capabilities": []string{"oob"},
	}})
}

func (s *serverConn) reply(r request, ret any) error {
	m := map[string]any{"return": ret}
	if r.ID != nil {
		m["id"] = r.ID
	}
	return s.send(m)
}

func (s *serverConn) replyError(r request, class, desc string) error {
	m := map[string]any{"error": map[string]string{"class": class, "desc": desc}}
	if r.ID != nil {
		m["id"] = r.ID
	}
	return s.send(m)
}

func (s *serverConn) event(name string, data any) error {
	m := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": 1700000000, "microseconds": 250},
	}
	if data != nil {
		m["data"] = data
	}
	return s.send(m)
}

// handshake greets and answers qmp_capabilities.
func (s *serverConn) handshake() bool {
	if err := s.greet(); err != nil {
		s.t.Errorf("server: greet: %v", err)
		return false
	}
	r, ok := s.mustRead("qmp_capabilities")
	if !ok {
		return false
	}
	if err := s.reply(r, struct{}{}); err != nil {
		s.t.Errorf("server: reply: %v", err)
		return false
	}
	return true
}

// serveStatus answers every query-status with a fixed status, and any other
// command with CommandNotFound, until the connection ends.
func (s *serverConn) serveStatus() {
	for {
		r, err := s.read()
		if err != nil {
			return
		}
		if r.Execute == "query-status" {
			err = s.reply(r, map[string]any{"status": "paused", "singlestep": false, "running": false})
		} else {
			err = s.replyError(r, "CommandNotFound", fmt.Sprintf("The command %s has not been found", r.Execute))
		}
		if err != nil {
			return
		}
	}
}

// isConnGone reports whether err just means the peer went away.
func isConnGone(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || err.Error() == "EOF"
}

// within fails the test if fn does not return within d.
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v", what, d)
	}
}

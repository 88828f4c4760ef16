package qmp_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// listenBacklog listens on a new unix socket with the given listen(2)
// backlog (net.Listen always uses the system's maximum). QEMU's monitor
// sockets use a backlog of 1.
func listenBacklog(t *testing.T, backlog int) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // the listener below holds its own descriptor
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, path
}

// TestDialBacklogFull dials, many at once, a socket whose backlog is full
// and that never accepts: every Dial waits for its deadline and reports
// ErrMonitorInUse, none fails at once on EAGAIN.
func TestDialBacklogFull(t *testing.T) {
	_, path := listenBacklog(t, 1)
	const clients = 16
	errs := make([]error, clients)
	took := make([]time.Duration, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			c, err := qmp.Dial(ctx, "unix:"+path)
			took[i] = time.Since(start)
			if c != nil {
				c.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	backlogFull := 0
	for i, err := range errs {
		if !errors.Is(err, qmp.ErrMonitorInUse) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.EAGAIN) {
			t.Errorf("Dial %d = %v (after %v), want ErrMonitorInUse and DeadlineExceeded (and not EAGAIN)", i, err, took[i])
		}
		if took[i] < 250*time.Millisecond || took[i] > 2*time.Second {
			t.Errorf("Dial %d gave up after %v, want the 300ms deadline", i, took[i])
		}
		if err != nil && strings.Contains(err.Error(), "listen backlog full") {
			backlogFull++
		}
	}
	if backlogFull == 0 {
		t.Errorf("no Dial met a full listen backlog: the test does not exercise EAGAIN")
	}
	t.Logf("%d of %d dials met a full backlog", backlogFull, clients)
}

// serveOneAtATime accepts one client at a time, as QEMU's monitor does:
// greets it and answers query-status until it leaves.
func serveOneAtATime(t *testing.T, ln net.Listener) {
	done := make(chan struct{})
	var mu sync.Mutex
	var cur net.Conn
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			cur = conn
			mu.Unlock()
			s := &serverConn{t: t, conn: conn}
			if s.greet() == nil {
				s.serveStatusAndCapabilities()
			}
			conn.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		if cur != nil {
			cur.Close()
		}
		mu.Unlock()
		<-done
	})
}

// serveStatusAndCapabilities answers qmp_capabilities and query-status
// until the connection ends, without failing the test when the client
// leaves early.
func (s *serverConn) serveStatusAndCapabilities() {
	for {
		r, err := s.read()
		if err != nil {
			return
		}
		switch r.Execute {
		case "qmp_capabilities":
			err = s.reply(r, struct{}{})
		case "query-status":
			err = s.reply(r, map[string]any{"status": "running", "singlestep": false, "running": true})
		default:
			err = s.replyError(r, "CommandNotFound", "no "+r.Execute)
		}
		if err != nil {
			return
		}
	}
}

// hammerMonitor runs clients goroutines that dial addr in a loop for d,
// each call with a short deadline, and run one command on each connection
// they get, holding it for hold. Every call must either succeed or report
// ErrMonitorInUse.
func hammerMonitor(t *testing.T, addr string, clients int, d, hold time.Duration) (ok, inUse int64) {
	var nOK, nBusy atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
				c, err := qmp.Dial(ctx, addr)
				if err == nil {
					_, err = qmp.QueryStatus(ctx, c)
					time.Sleep(hold) // keep the monitor, so the others queue
					c.Close()
				}
				cancel()
				switch {
				case err == nil:
					nOK.Add(1)
				case errors.Is(err, qmp.ErrMonitorInUse):
					nBusy.Add(1)
				case errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, syscall.EAGAIN):
					// Connected and greeted, then the deadline ended
					// during the command: the monitor was busy serving.
					nBusy.Add(1)
				default:
					t.Errorf("call failed with neither success nor monitor-in-use: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return nOK.Load(), nBusy.Load()
}

// TestDialManyClientsOneSocket: 8 clients on one monitor socket with a
// backlog of 1 that serves one client at a time, as QEMU does.
func TestDialManyClientsOneSocket(t *testing.T) {
	ln, path := listenBacklog(t, 1)
	serveOneAtATime(t, ln)
	ok, busy := hammerMonitor(t, "unix:"+path, 8, 2*time.Second, 20*time.Millisecond)
	t.Logf("%d calls succeeded, %d found the monitor in use", ok, busy)
	if ok == 0 || busy == 0 {
		t.Errorf("%d calls succeeded and %d found the monitor in use, want some of each", ok, busy)
	}
}

// TestQEMUDialManyClientsOneSocket is the same against a real QEMU
// monitor socket.
func TestQEMUDialManyClientsOneSocket(t *testing.T) {
	p := startQEMU(t)
	dialQEMU(t, p).Close() // wait until the socket is up
	ok, busy := hammerMonitor(t, "unix:"+p.sock, 8, 3*time.Second, 20*time.Millisecond)
	t.Logf("%d calls succeeded, %d found the monitor in use", ok, busy)
	if ok == 0 || busy == 0 {
		t.Errorf("%d calls succeeded and %d found the monitor in use, want some of each", ok, busy)
	}
}

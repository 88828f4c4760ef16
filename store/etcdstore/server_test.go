package etcdstore

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The tests run Debian's etcd (package etcd-server, binary etcd) as a
// child process on loopback ports, with its data in a t.TempDir. Without
// it they skip, unless CI=true: then they fail.
const etcdBinary = "etcd"

// etcdServer is one single-member etcd started by a test.
type etcdServer struct {
	t        testing.TB
	dir      string
	client   string // host:port
	peer     string // host:port
	extra    []string
	tls      bool
	cmd      *exec.Cmd
	exited   chan struct{}
	log      *lockedBuffer
	stopOnce *sync.Once
}

// requireEtcd skips the test when etcd is not on PATH, or fails it under
// CI=true.
func requireEtcd(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath(etcdBinary); err == nil {
		return
	}
	msg := "etcdstore: the etcd binary (Debian package etcd-server) is needed on PATH"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

// startEtcd starts etcd on two free loopback ports and waits until it
// answers. extra are more etcd flags (TLS). The process is killed and its
// data removed when the test ends.
func startEtcd(t testing.TB, extra ...string) *etcdServer {
	t.Helper()
	requireEtcd(t)
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		srv := &etcdServer{t: t, dir: filepath.Join(dir, "data"+strconv.Itoa(attempt)), client: freePort(t), peer: freePort(t), extra: extra}
		for _, a := range extra {
			if a == "--cert-file" {
				srv.tls = true
			}
		}
		if lastErr = srv.start(); lastErr == nil {
			return srv
		}
	}
	msg := fmt.Sprintf("etcdstore: cannot start etcd: %v", lastErr)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (s *etcdServer) scheme() string {
	if s.tls {
		return "https"
	}
	return "http"
}

// start runs etcd on s's ports and data directory and waits until its
// client port accepts connections and it has a leader.
func (s *etcdServer) start() error {
	curl := s.scheme() + "://" + s.client
	purl := "http://" + s.peer
	args := append([]string{
		"--name", "test",
		"--data-dir", s.dir,
		"--listen-client-urls", curl,
		"--advertise-client-urls", curl,
		"--listen-peer-urls", purl,
		"--initial-advertise-peer-urls", purl,
		"--initial-cluster", "test=" + purl,
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--log-level", "warn",
		"--logger", "zap",
	}, s.extra...)
	s.log = &lockedBuffer{}
	s.cmd = exec.Command(etcdBinary, args...)
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.exited = make(chan struct{})
	s.stopOnce = &sync.Once{}
	go func() {
		s.cmd.Wait()
		close(s.exited)
	}()
	s.t.Cleanup(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("etcd exited: %v\n%s", s.cmd.ProcessState, s.log)
		default:
		}
		if c, err := net.DialTimeout("tcp", s.client, 100*time.Millisecond); err == nil {
			c.Close()
			if s.ready() {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop()
	return fmt.Errorf("etcd did not answer within 20s:\n%s", s.log)
}

// ready reports whether etcd serves a linearizable read.
func (s *etcdServer) ready() bool {
	if s.tls {
		return true // the TLS test checks by connecting with certificates
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.endpoint()}, DialTimeout: time.Second})
	if err != nil {
		return false
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = cli.Get(ctx, "ready")
	return err == nil
}

// endpoint is the client URL.
func (s *etcdServer) endpoint() string { return s.scheme() + "://" + s.client }

// stop kills the etcd process this test started, by pid, and waits for it.
func (s *etcdServer) stop() {
	s.stopOnce.Do(func() {
		if s.cmd.Process != nil {
			_ = syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
		}
		<-s.exited
	})
}

// restart starts etcd again on the same ports and data after stop.
func (s *etcdServer) restart() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("restarting etcd: %v", err)
	}
}

// newClient connects to srv; closed when the test ends.
func newClient(t testing.TB, srv *etcdServer) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// newStore returns a Store over a new client of srv with opts; closed
// when the test ends.
func newStore(t testing.TB, srv *etcdServer, opts Options) *Store {
	t.Helper()
	s, err := New(newClient(t, srv), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

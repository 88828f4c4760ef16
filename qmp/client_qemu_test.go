package qmp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/qmp"
)

// qemuProc is a QEMU process started by a test, stopped (-S) with its QMP
// monitor on a unix socket.
type qemuProc struct {
	cmd    *exec.Cmd
	sock   string   // the first monitor socket
	socks  []string // every monitor socket
	stderr *bytes.Buffer
}

// startQEMU starts qemu-system-x86_64 for tb and kills it in tb's cleanup.
// It skips when QEMU is missing, except under CI=true where it fails.
func startQEMU(tb testing.TB) *qemuProc {
	tb.Helper()
	return startQEMUMonitors(tb, 1)
}

// startQEMUMonitors is startQEMU with n QMP monitors, each on its own socket.
func startQEMUMonitors(tb testing.TB, n int) *qemuProc {
	tb.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("qemu-system-x86_64 not found (CI=true): %v", err)
		}
		tb.Skipf("qemu-system-x86_64 not found: %v", err)
	}
	dir := tb.TempDir()
	p := &qemuProc{stderr: new(bytes.Buffer)}
	args := []string{"-machine", "pc,accel=tcg", "-nodefaults", "-display", "none", "-m", "64", "-S"}
	for i := 0; i < n; i++ {
		sock := filepath.Join(dir, fmt.Sprintf("qmp%d.sock", i))
		p.socks = append(p.socks, sock)
		args = append(args, "-qmp", "unix:"+sock+",server=on,wait=off")
	}
	p.sock = p.socks[0]
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stderr = p.stderr
	// QEMU dies with the test process even if the test is killed.
	p.cmd.SysProcAttr = dieWithTest()
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start QEMU: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		p.cmd.Wait()
		close(exited)
	}()
	tb.Cleanup(func() {
		p.cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for _, sock := range p.socks {
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			select {
			case <-exited:
				tb.Fatalf("QEMU exited before creating %s: %s", sock, p.stderr)
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				tb.Fatalf("QEMU did not create %s within 10s", sock)
			}
		}
	}
	return p
}

// dialQEMU connects to p, retrying briefly while the socket is not yet
// listening.
func dialQEMU(tb testing.TB, p *qemuProc) *qmp.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		c, err := qmp.Dial(ctx, "unix:"+p.sock)
		if err == nil {
			tb.Cleanup(func() { c.Close() })
			return c
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || ctx.Err() != nil {
			tb.Fatalf("Dial QEMU: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestQEMUConnectAndProbe(t *testing.T) {
	c := dialQEMU(t, startQEMU(t))
	ctx := context.Background()
	f, err := qmp.Probe(ctx, c)
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if diff := cmp.Diff(c.Greeting().Version, f.Version); diff != "" {
		t.Errorf("greeting version differs from query-version (-greeting +probe):\n%s", diff)
	}
	if !f.Version.AtLeast(2, 0) {
		t.Errorf("implausible QEMU version %v", f.Version)
	}
	for _, cmd := range []string{"query-status", "getfd", "migrate", "human-monitor-command"} {
		if !f.Has(cmd) {
			t.Errorf("QEMU lacks %s according to Probe", cmd)
		}
	}
	if f.Has("no-such-command") {
		t.Errorf("Has(no-such-command) = true")
	}
	if !f.HasMigrationCapability("xbzrle") {
		t.Errorf("migration capabilities lack xbzrle: %v", f.MigrationCapabilities)
	}
	st, err := qmp.QueryStatus(ctx, c)
	if err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	if diff := cmp.Diff(qmp.Status{State: qmp.RunStatePrelaunch}, st); diff != "" {
		t.Errorf("status of a -S guest (-want +got):\n%s", diff)
	}
	err = c.Execute(ctx, "no-such-command", nil, nil)
	if !qmp.IsClass(err, "CommandNotFound") {
		t.Errorf("unknown command = %v, want CommandNotFound", err)
	}
	err = c.Execute(ctx, "device_del", map[string]string{"id": "nodev"}, nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Command != "device_del" || qe.Class != "DeviceNotFound" || !strings.Contains(qe.Desc, "nodev") {
		t.Errorf("device_del of a missing device = %#v", err)
	}
}

func TestQEMUSequentialCalls(t *testing.T) {
	c := dialQEMU(t, startQEMU(t))
	for i := 0; i < 1000; i++ {
		st, err := qmp.QueryStatus(context.Background(), c)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if st.State != qmp.RunStatePrelaunch {
			t.Fatalf("call %d: state %q", i, st.State)
		}
	}
}

func TestQEMUConcurrentCalls(t *testing.T) {
	c := dialQEMU(t, startQEMU(t))
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				switch (g + i) % 3 {
				case 0:
					st, err := qmp.QueryStatus(context.Background(), c)
					if err != nil || st.State != qmp.RunStatePrelaunch {
						t.Errorf("goroutine %d: query-status = %+v, %v", g, st, err)
						return
					}
				case 1:
					var name struct{ Name string }
					if err := c.Execute(context.Background(), "query-name", nil, &name); err != nil {
						t.Errorf("goroutine %d: query-name: %v", g, err)
						return
					}
				case 2:
					var out string
					err := c.Execute(context.Background(), "human-monitor-command",
						map[string]string{"command-line": "info status"}, &out)
					if err != nil || !strings.Contains(out, "prelaunch") {
						t.Errorf("goroutine %d: info status = %q, %v", g, out, err)
						return
					}
				}
			}
		}()
	}
	within(t, 30*time.Second, "8 goroutines of commands", wg.Wait)
}

func TestQEMULargeReply(t *testing.T) {
	c := dialQEMU(t, startQEMU(t))
	// "xp /Nbx 0" prints 8 bytes per line, about 59 characters.
	const n = 160000
	var out string
	err := c.Execute(context.Background(), "human-monitor-command",
		map[string]string{"command-line": fmt.Sprintf("xp /%dbx 0", n)}, &out)
	if err != nil {
		t.Fatalf("xp: %v", err)
	}
	if len(out) < 1<<20 {
		t.Fatalf("xp reply is %d bytes, want at least 1 MiB", len(out))
	}
	lines := strings.Split(strings.TrimRight(out, "\r\n"), "\n")
	if len(lines) != n/8 {
		t.Errorf("xp printed %d lines, want %d", len(lines), n/8)
	}
	last := fmt.Sprintf("%016x:", n-8)
	if !strings.HasPrefix(strings.TrimSpace(lines[len(lines)-1]), last) {
		t.Errorf("last line %q, want prefix %q", lines[len(lines)-1], last)
	}
	t.Logf("xp /%dbx reply: %d bytes", n, len(out))
	if _, err := qmp.QueryStatus(context.Background(), c); err != nil {
		t.Errorf("QueryStatus after the large reply: %v", err)
	}
}

func TestQEMUSubscribers(t *testing.T) {
	c := dialQEMU(t, startQEMU(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idle, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	active, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 25
	got := make(chan []string, 1)
	go func() {
		var names []string
		for ev := range active {
			names = append(names, ev.Name)
			if len(names) == 2*rounds {
				break
			}
		}
		got <- names
	}()
	within(t, 20*time.Second, "stop/cont with an idle subscriber", func() {
		for i := 0; i < rounds; i++ {
			for _, cmd := range []string{"cont", "query-status", "stop", "query-status"} {
				if err := c.Execute(ctx, cmd, nil, nil); err != nil {
					t.Errorf("round %d %s: %v", i, cmd, err)
					return
				}
			}
		}
	})
	var want []string
	for i := 0; i < rounds; i++ {
		want = append(want, "RESUME", "STOP")
	}
	select {
	case names := <-got:
		if diff := cmp.Diff(want, names); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("active subscriber did not get every event")
	}
	// The idle subscriber's queue holds the same sequence.
	for i, name := range want {
		select {
		case ev := <-idle:
			if ev.Name != name || ev.Time.IsZero() {
				t.Fatalf("idle subscriber event %d = %s at %v, want %s with a time", i, ev.Name, ev.Time, name)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("idle subscriber missing event %d", i)
		}
	}
}

func TestQEMUKilledDuringCall(t *testing.T) {
	p := startQEMU(t)
	c := dialQEMU(t, p)
	// Freeze QEMU so the call is certainly pending when it dies.
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "query-status", nil, nil) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("call returned while QEMU was stopped: %v", err)
	default:
	}
	killed := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, qmp.ErrClosed) {
			t.Errorf("pending call after SIGKILL = %v, want ErrClosed", err)
		}
		t.Logf("pending call failed %v after SIGKILL", time.Since(killed))
	case <-time.After(time.Second):
		t.Fatal("pending call still blocked 1s after SIGKILL")
	}
	if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("call after SIGKILL = %v, want ErrClosed", err)
	}
}

func TestQEMUMigrateToPassedFD(t *testing.T) {
	c := dialQEMU(t, startQEMU(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "vmstate")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := c.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": "vmstate"}, nil, f); err != nil {
		t.Fatalf("getfd: %v", err)
	}
	f.Close() // QEMU has its own copy
	if err := c.Execute(ctx, "migrate", map[string]string{"uri": "fd:vmstate"}, nil); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	var status string
	for status != "completed" {
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := c.Execute(ctx, "query-migrate", nil, &mi); err != nil {
			t.Fatalf("query-migrate: %v", err)
		}
		status = mi.Status
		if status == "failed" || status == "cancelled" {
			t.Fatalf("migration %s: %s", status, mi.ErrorDesc)
		}
		time.Sleep(20 * time.Millisecond)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 || !bytes.HasPrefix(data, []byte("QEVM")) {
		t.Fatalf("vmstate file: %d bytes, prefix %q; want a QEVM stream", len(data), data[:min(4, len(data))])
	}
	t.Logf("vmstate written through the passed fd: %d bytes", len(data))
}

func TestQEMUSecondClientInUse(t *testing.T) {
	p := startQEMU(t)
	first := dialQEMU(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	second, err := qmp.Dial(ctx, "unix:"+p.sock)
	if err == nil {
		second.Close()
		t.Fatal("second Dial succeeded while the first client is connected")
	}
	if !errors.Is(err, qmp.ErrMonitorInUse) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Dial = %v, want ErrMonitorInUse and DeadlineExceeded", err)
	}
	if _, err := qmp.QueryStatus(context.Background(), first); err != nil {
		t.Fatalf("first client after the second Dial: %v", err)
	}
	// Once the first client leaves, QEMU greets the next one.
	first.Close()
	third := dialQEMU(t, p)
	if _, err := qmp.QueryStatus(context.Background(), third); err != nil {
		t.Fatalf("client after the first left: %v", err)
	}
}

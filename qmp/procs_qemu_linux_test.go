package qmp_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// The multi-process test re-runs the test binary as its clients
// (TestMonitorClientProcess), selected by these environment variables.
const (
	envClientAddr     = "VMSNAP_QMP_CLIENT_ADDR"     // the monitor to dial
	envClientDuration = "VMSNAP_QMP_CLIENT_DURATION" // how long to keep calling
)

// Each client call: Dial under dialDeadline, then query-status under
// commandDeadline, holding the monitor for hold so that the others queue.
const (
	dialDeadline    = 250 * time.Millisecond
	commandDeadline = 5 * time.Second
	clientHold      = 20 * time.Millisecond
)

// TestMonitorClientProcess is not a test: it is one client process of
// TestQEMUManyProcessesOneSocket. It calls the monitor in a loop and prints
// one line, "result ok=N busy=N backlog=N unexpected=N", after a line
// "unexpected: ERR" for each of the first few calls that neither succeeded
// nor found the monitor in use.
func TestMonitorClientProcess(t *testing.T) {
	addr := os.Getenv(envClientAddr)
	if addr == "" {
		t.Skip("client process of TestQEMUManyProcessesOneSocket")
	}
	d, err := time.ParseDuration(os.Getenv(envClientDuration))
	if err != nil {
		fmt.Println("unexpected:", err)
		os.Exit(2)
	}
	var ok, busy, backlog, unexpected int
	for stop := time.Now().Add(d); time.Now().Before(stop); {
		err := monitorCall(addr)
		switch {
		case err == nil:
			ok++
		case errors.Is(err, qmp.ErrMonitorInUse) && !errors.Is(err, syscall.EAGAIN):
			busy++
			if strings.Contains(err.Error(), "listen backlog full") {
				backlog++
			}
		default:
			if unexpected++; unexpected <= 5 {
				fmt.Println("unexpected:", err)
			}
		}
	}
	fmt.Printf("result ok=%d busy=%d backlog=%d unexpected=%d\n", ok, busy, backlog, unexpected)
	os.Exit(0)
}

// monitorCall is one client call: connect, query-status, hold, close. Only
// connecting is bounded by dialDeadline: a client QEMU has greeted holds
// the monitor, so its command must succeed.
func monitorCall(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
	c, err := qmp.Dial(ctx, addr)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel = context.WithTimeout(context.Background(), commandDeadline)
	defer cancel()
	if _, err := qmp.QueryStatus(ctx, c); err != nil {
		return err
	}
	time.Sleep(clientHold)
	return nil
}

// TestQEMUManyProcessesOneSocket: 8 processes call one real QEMU monitor
// socket (listen backlog 1, one client at a time) over and over, for 10 s
// (30 s with VMSNAP_LONG=1). Every call either succeeds or reports
// ErrMonitorInUse; none fails on EAGAIN.
func TestQEMUManyProcessesOneSocket(t *testing.T) {
	const procs = 8
	d := 10 * time.Second
	if os.Getenv("VMSNAP_LONG") == "1" {
		d = 30 * time.Second
	}
	sock := filepath.Join(shortSocketDir(t), "busy.qmp")
	qemutest.Start(t, qemutest.Options{
		Disks:  1,
		Paused: true,
		// The rig keeps its own client on the first monitor.
		ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"},
	})

	type child struct {
		cmd    *exec.Cmd
		stdout bytes.Buffer
		stderr bytes.Buffer
		exited chan struct{}
	}
	children := make([]*child, procs)
	for i := range children {
		ch := &child{exited: make(chan struct{})}
		ch.cmd = exec.Command(os.Args[0], "-test.run=^TestMonitorClientProcess$")
		// GORACE: a race-enabled child would otherwise sleep a second at exit.
		ch.cmd.Env = append(os.Environ(), envClientAddr+"=unix:"+sock, envClientDuration+"="+d.String(), "GORACE=atexit_sleep_ms=0")
		ch.cmd.Stdout, ch.cmd.Stderr = &ch.stdout, &ch.stderr
		ch.cmd.SysProcAttr = dieWithTest()
		if err := ch.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			ch.cmd.Wait()
			close(ch.exited)
		}()
		t.Cleanup(func() {
			ch.cmd.Process.Kill()
			<-ch.exited
		})
		children[i] = ch
	}

	var ok, busy, backlog, unexpected int
	for i, ch := range children {
		select {
		case <-ch.exited:
		case <-time.After(d + 30*time.Second):
			t.Fatalf("client process %d (pid %d) still runs %v after its end", i, ch.cmd.Process.Pid, 30*time.Second)
		}
		if !ch.cmd.ProcessState.Success() {
			t.Errorf("client process %d: %v\n%s%s", i, ch.cmd.ProcessState, ch.stdout.String(), ch.stderr.String())
			continue
		}
		var got bool
		sc := bufio.NewScanner(&ch.stdout)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "unexpected:") {
				t.Errorf("client process %d: a call neither succeeded nor found the monitor in use: %s", i, line)
			}
			var o, b, bl, u int
			if _, err := fmt.Sscanf(line, "result ok=%d busy=%d backlog=%d unexpected=%d", &o, &b, &bl, &u); err == nil {
				got = true
				ok, busy, backlog, unexpected = ok+o, busy+b, backlog+bl, unexpected+u
				t.Logf("client process %d: %d succeeded, %d found the monitor in use (%d of them at a full listen backlog), %d failed otherwise", i, o, b, bl, u)
			}
		}
		if !got {
			t.Errorf("client process %d printed no result:\n%s%s", i, ch.stdout.String(), ch.stderr.String())
		}
	}
	t.Logf("%d processes for %v: %d calls succeeded, %d found the monitor in use (%d at a full listen backlog), %d failed otherwise",
		procs, d, ok, busy, backlog, unexpected)
	if unexpected != 0 {
		t.Errorf("%d calls failed with neither success nor ErrMonitorInUse", unexpected)
	}
	if ok == 0 || busy == 0 {
		t.Errorf("%d calls succeeded and %d found the monitor in use, want some of each", ok, busy)
	}
}

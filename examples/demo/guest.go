package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// counterAddr is where the boot-sector guest keeps its counter; the fake
// shows its counter there too.
const counterAddr = qemutest.CounterAddr

// guest is the throwaway domain: a real QEMU or the fake.
type guest struct {
	mon  *qmp.Client
	uuid string
	desc string // one line saying what runs
	real bool

	dir   string // temporary directory holding images, socket, store
	cmd   *exec.Cmd
	fake  *fakeqemu.Server
	exitc chan struct{}
}

// haveQEMU reports whether the real QEMU binaries are on PATH.
func haveQEMU() bool {
	for _, b := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(b); err != nil {
			return false
		}
	}
	return true
}

func randomUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// startGuest starts the real guest when QEMU is installed, else the fake.
func startGuest(ctx context.Context) (*guest, error) {
	dir, err := os.MkdirTemp("", "vmsnap-demo")
	if err != nil {
		return nil, err
	}
	uuid, err := randomUUID()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	g := &guest{dir: dir, uuid: uuid}
	if haveQEMU() {
		g.real = true
		err = g.startQEMU(ctx)
	} else {
		err = g.startFake(ctx)
	}
	if err != nil {
		g.close()
		return nil, err
	}
	return g, nil
}

func (g *guest) startFake(ctx context.Context) error {
	s, err := fakeqemu.Start(fakeqemu.Options{
		UUID:        g.uuid,
		CounterAddr: counterAddr,
		Disks: []fakeqemu.Disk{
			{Node: "disk0", Device: "dev0", File: filepath.Join(g.dir, "disk0.qcow2")},
			{Node: "disk1", Device: "dev1", File: filepath.Join(g.dir, "disk1.qcow2")},
		},
		CreateOverlays: true,
	})
	if err != nil {
		return fmt.Errorf("start the fake QEMU: %w", err)
	}
	g.fake = s
	g.desc = "qemu-system-x86_64 not found: running against the built-in fake QEMU (internal/fakeqemu)"
	g.mon, err = qmp.Dial(ctx, "unix:"+s.Addr())
	return err
}

func (g *guest) startQEMU(ctx context.Context) error {
	// The guest: the boot sector as a raw image, converted to qcow2.
	raw := filepath.Join(g.dir, "bootsector.raw")
	if err := os.WriteFile(raw, qemutest.BootSector(), 0o600); err != nil {
		return err
	}
	disk0, disk1 := filepath.Join(g.dir, "disk0.qcow2"), filepath.Join(g.dir, "disk1.qcow2")
	for _, args := range [][]string{
		{"convert", "-q", "-f", "raw", "-O", "qcow2", raw, disk0},
		{"resize", "-q", "-f", "qcow2", disk0, "64M"},
		{"create", "-q", "-f", "qcow2", disk1, "64M"},
	} {
		if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	sock := filepath.Join(g.dir, "qmp.sock")
	opt := func(s string) string { return strings.ReplaceAll(s, ",", ",,") }
	argv := []string{
		"-machine", "pc,accel=tcg", "-nodefaults", "-display", "none", "-m", "64",
		"-uuid", g.uuid,
		"-blockdev", "driver=file,filename=" + opt(disk0) + ",node-name=disk0-file",
		"-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0",
		"-device", "ide-hd,drive=disk0,id=dev0,bus=ide.0,unit=0,bootindex=0",
		"-blockdev", "driver=file,filename=" + opt(disk1) + ",node-name=disk1-file",
		"-blockdev", "driver=qcow2,file=disk1-file,node-name=disk1",
		"-device", "ide-hd,drive=disk1,id=dev1,bus=ide.0,unit=1",
		"-qmp", "unix:" + opt(sock) + ",server=on,wait=off",
	}
	logf, err := os.Create(filepath.Join(g.dir, "qemu.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	g.cmd = exec.Command("qemu-system-x86_64", argv...)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	g.cmd.SysProcAttr = dieWithParent()
	if err := g.cmd.Start(); err != nil {
		return fmt.Errorf("start qemu-system-x86_64: %w", err)
	}
	g.exitc = make(chan struct{})
	go func() {
		g.cmd.Wait()
		close(g.exitc)
	}()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		attempt, cancelAttempt := context.WithTimeout(dctx, time.Second)
		g.mon, err = qmp.Dial(attempt, "unix:"+sock)
		cancelAttempt()
		if err == nil {
			break
		}
		select {
		case <-g.exitc:
			out, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("QEMU exited: %s", strings.TrimSpace(string(out)))
		case <-dctx.Done():
			return fmt.Errorf("connect to QEMU: %w", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Wait until the boot sector runs: before it, the firmware owns the
	// counter's memory.
	if err := g.waitCounter(dctx); err != nil {
		return err
	}
	var v struct {
		QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
	}
	if err := g.mon.Execute(ctx, "query-version", nil, &v); err != nil {
		return err
	}
	g.desc = fmt.Sprintf("QEMU %d.%d.%d (pid %d): a throwaway VM, 64 MiB, two qcow2 disks in %s",
		v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, g.cmd.Process.Pid, g.dir)
	return nil
}

// waitCounter waits until two reads of the counter show it growing from
// a small value: the boot sector zeroes it, then counts.
func (g *guest) waitCounter(ctx context.Context) error {
	var prev uint64
	for {
		c, err := counter(ctx, g.mon)
		if err != nil {
			return err
		}
		if c > prev && prev != 0 && c < 1<<32 {
			return nil
		}
		prev = c
		select {
		case <-ctx.Done():
			return fmt.Errorf("the guest's counter does not run (last read %d): %w", c, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// counter reads the guest's counter with HMP xp.
func counter(ctx context.Context, mon qmp.Monitor) (uint64, error) {
	var out string
	err := mon.Execute(ctx, "human-monitor-command", map[string]string{"command-line": fmt.Sprintf("xp /1gx %#x", counterAddr)}, &out)
	if err != nil {
		return 0, fmt.Errorf("read the counter: %w", err)
	}
	_, val, ok := strings.Cut(strings.TrimSpace(out), ": ")
	if !ok || !strings.HasPrefix(val, "0x") {
		return 0, fmt.Errorf("read the counter: unexpected xp output %q", out)
	}
	n, err := strconv.ParseUint(val[2:], 16, 64)
	if err != nil {
		return 0, fmt.Errorf("read the counter: %w", err)
	}
	return n, nil
}

// runOn lets the guest run a little: the real one for a moment, the fake
// (whose counter moves with every command) for a few commands.
func (g *guest) runOn(ctx context.Context, mon qmp.Monitor) error {
	if g.real {
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	for range 5 {
		if _, err := qmp.QueryStatus(ctx, mon); err != nil {
			return err
		}
	}
	return nil
}

// close ends the guest and removes its directory.
func (g *guest) close() error {
	var errs []error
	if g.mon != nil {
		if g.cmd != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if err := g.mon.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, qmp.ErrClosed) {
				errs = append(errs, err)
			}
			cancel()
		}
		g.mon.Close()
	}
	if g.cmd != nil && g.exitc != nil {
		select {
		case <-g.exitc:
		case <-time.After(3 * time.Second):
			g.cmd.Process.Kill()
			<-g.exitc
		}
	}
	if g.fake != nil {
		if err := g.fake.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(g.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

package qemutest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestBootSector(t *testing.T) {
	b := BootSector()
	if len(b) != 512 {
		t.Fatalf("len = %d, want 512", len(b))
	}
	if b[510] != 0x55 || b[511] != 0xAA {
		t.Errorf("signature = %#x %#x, want 0x55 0xaa", b[510], b[511])
	}
	// mov ax, imm16 loads ds with the counter's segment.
	if got := uint32(binary.LittleEndian.Uint16(b[0x09:])) << 4; got != CounterAddr {
		t.Errorf("data segment base = %#x, want CounterAddr %#x", got, CounterAddr)
	}
	// The final jmp short lands on the add.
	const jmp = 0x24
	if b[jmp] != 0xEB {
		t.Fatalf("byte %#x = %#x, want jmp short 0xEB", jmp, b[jmp])
	}
	target := jmp + 2 + int(int8(b[jmp+1]))
	if !bytes.Equal(b[target:target+3], []byte{0x66, 0x83, 0x06}) {
		t.Errorf("jmp target %#x holds % x, want add dword [disp16], imm8", target, b[target:target+3])
	}
	if CounterAddr>>12 == bootLoad>>12 || (bootLoad+len(b)-1)>>12 == CounterAddr>>12 {
		t.Errorf("counter %#x shares a 4 KiB page with the boot code", CounterAddr)
	}
	if b2 := BootSector(); &b2[0] == &b[0] {
		t.Error("BootSector returned the same slice twice")
	}
}

func TestParseXP(t *testing.T) {
	tests := []struct {
		out     string
		want    uint64
		wantErr bool
	}{
		{out: "0000000000010000: 0x00000000008c3aa7\r\n", want: 0x8c3aa7},
		{out: "0000000000010000: 0xffffffffffffffff\r\n", want: ^uint64(0)},
		{out: "", wantErr: true},
		{out: "Cannot access memory\r\n", wantErr: true},
		{out: "0000000000010000: 0xzz\r\n", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseXP(tt.out)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseXP(%q) = %#x, %v; want %#x, error %v", tt.out, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseSnapshotTags(t *testing.T) {
	long := strings.Repeat("0123456789", 25) + "01234"
	tests := []struct {
		name string
		out  string
		want []string
	}{
		{name: "empty image", out: "", want: []string{}},
		{
			name: "qemu-img 7.2 listing",
			out: "Snapshot list:\n" +
				"ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n" +
				"1         only1                 0 B 2026-11-26 07:20:45 00:00:00.386           \n" +
				"2         a b               712 KiB 2026-11-26 07:20:45 00:00:00.388           \n" +
				"3         0 B                   0 B 2026-11-26 07:20:45 00:00:00.388           \n" +
				"4         " + long + "      0 B 2026-11-26 07:20:45 00:00:00.389           \n" +
				"12345678901 x                 1.2 MiB 2026-11-26 07:20:45 100:00:00.389       1234\n",
			want: []string{"only1", "a b", "0 B", long, "x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSnapshotTags(tt.out)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("tags (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := parseSnapshotTags("garbage line\n"); err == nil {
		t.Error("parseSnapshotTags accepted a garbage line")
	}
}

// TestStartCounterAdvances proves the guest runs and measures it.
func TestStartCounterAdvances(t *testing.T) {
	began := time.Now()
	vm := Start(t, Options{})
	startTotal := time.Since(began)
	ctx := testContext(t)

	c1, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	time.Sleep(200 * time.Millisecond)
	c2, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(t1)
	if c2 <= c1 {
		t.Fatalf("counter did not advance: %d then %d", c1, c2)
	}
	t.Logf("monitor up after %v, first counter increment seen after %v, Start took %v; counter rate %.3g increments/s under TCG",
		vm.startup.Round(time.Millisecond), vm.bootTime.Round(time.Millisecond), startTotal.Round(time.Millisecond),
		float64(c2-c1)/elapsed.Seconds())

	if len(vm.Disks) != 2 || vm.Disks[1].Node != "disk1" || vm.Disks[1].Device != "dev1" || vm.Disks[1].FileNode != "disk1-file" {
		t.Errorf("Disks = %+v", vm.Disks)
	}
	var uuid struct {
		UUID string `json:"UUID"`
	}
	if err := vm.Mon.Execute(ctx, "query-uuid", nil, &uuid); err != nil {
		t.Fatal(err)
	}
	if vm.UUID == "" || uuid.UUID != vm.UUID {
		t.Errorf("query-uuid = %q, want VM.UUID %q", uuid.UUID, vm.UUID)
	}
}

func TestStopFreezesCounter(t *testing.T) {
	vm := Start(t, Options{Disks: 1})
	ctx := testContext(t)
	if _, err := vm.HMP(ctx, "stop"); err != nil {
		t.Fatal(err)
	}
	c1, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	c2, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 {
		t.Fatalf("counter moved while paused: %d then %d", c1, c2)
	}
	if _, err := vm.HMP(ctx, "cont"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	c3, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c3 <= c2 {
		t.Fatalf("counter did not resume after cont: %d then %d", c2, c3)
	}
}

func TestPausedStart(t *testing.T) {
	vm := Start(t, Options{Disks: 1, Paused: true, NoUUID: true})
	ctx := testContext(t)
	if c, err := vm.Counter(ctx); err != nil || c != 0 {
		t.Fatalf("counter of a guest started with -S = %d, %v; want 0", c, err)
	}
	for _, a := range vm.Argv {
		if a == "-uuid" {
			t.Errorf("NoUUID: argv has -uuid: %q", vm.Argv)
		}
	}
}

func TestQemuIOAndReadPattern(t *testing.T) {
	vm := Start(t, Options{})
	ctx := testContext(t)
	dev, file := vm.Disks[1].Device, vm.Disks[1].File

	out, err := vm.QemuIO(ctx, dev, "write -P 0xab 65536 65536")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "wrote 65536/65536 bytes at offset 65536") {
		t.Fatalf("qemu-io write output %q", out)
	}
	out, err = vm.QemuIO(ctx, dev, "read -P 0xab 65536 65536")
	if err != nil || strings.Contains(out, "Pattern verification failed") || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("qemu-io read of the written pattern: %q, %v", out, err)
	}
	if out, err = vm.QemuIO(ctx, dev, "read -P 0xcd 65536 65536"); err != nil || !strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read of a wrong pattern: %q, %v", out, err)
	}
	if _, err := vm.QemuIO(ctx, "nodev", "read 0 512"); err == nil || !strings.Contains(err.Error(), "nodev") {
		t.Errorf("qemu-io on a missing device: err = %v, want one naming it", err)
	}
	if _, err := vm.QemuIO(ctx, "dev1 x", "read 0 512"); err == nil {
		t.Error("qemu-io accepted a device name with a space")
	}
	if _, err := vm.QemuIO(ctx, dev, "flush"); err != nil {
		t.Fatal(err)
	}

	// Offline, while QEMU still holds the image (-U).
	if !ReadPattern(t, file, 65536, 65536, 0xab) {
		t.Error("ReadPattern: written pattern not seen while QEMU runs")
	}
	if ReadPattern(t, file, 65536, 65536, 0xcd) {
		t.Error("ReadPattern: wrong pattern matched")
	}
	if !ReadPattern(t, file, 0, 65536, 0) {
		t.Error("ReadPattern: untouched area is not zero")
	}
	if !ReadPattern(t, vm.Disks[0].File, 510, 1, 0x55) || !ReadPattern(t, vm.Disks[0].File, 511, 1, 0xAA) {
		t.Error("ReadPattern: boot signature not found on disk0")
	}

	// And after a crash.
	vm.Kill()
	vm.Kill() // idempotent
	if !ReadPattern(t, file, 65536, 65536, 0xab) {
		t.Error("ReadPattern: written pattern lost after QEMU was killed")
	}
}

func TestImgSnapshots(t *testing.T) {
	vm := Start(t, Options{})
	ctx := testContext(t)
	if got := ImgSnapshots(t, vm.Disks[1].File); len(got) != 0 {
		t.Fatalf("fresh image has snapshots %q", got)
	}
	for _, tag := range []string{"first", "second"} {
		args := map[string]string{"device": "disk1", "name": tag}
		if err := vm.Mon.Execute(ctx, "blockdev-snapshot-internal-sync", args, nil); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]string{"first", "second"}, ImgSnapshots(t, vm.Disks[1].File)); diff != "" {
		t.Errorf("ImgSnapshots (-want +got):\n%s", diff)
	}
	if got := ImgSnapshots(t, vm.Disks[0].File); len(got) != 0 {
		t.Errorf("disk0 has snapshots %q", got)
	}
}

func TestLoader(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "random.bin")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	const addr = 0x200000
	vm := Start(t, Options{Disks: 1, Loaders: []Loader{{File: file, Addr: addr}}})
	ctx := testContext(t)
	for _, off := range []int{0, len(data) - 8} {
		out, err := vm.HMP(ctx, fmt.Sprintf("xp /1gx %#x", addr+off))
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseXP(out)
		if err != nil {
			t.Fatal(err)
		}
		if want := binary.LittleEndian.Uint64(data[off:]); got != want {
			t.Errorf("guest memory at %#x = %#x, want the loaded file's %#x", addr+off, got, want)
		}
	}
}

// TestCleanup proves that a VM's cleanup leaves no process and no files:
// for a running VM, one that was killed, and one that was relaunched.
func TestCleanup(t *testing.T) {
	for _, how := range []string{"running", "killed", "relaunched"} {
		dir := t.TempDir()
		var pids []int
		var files []string
		t.Run(how, func(t *testing.T) {
			vm := Start(t, Options{Dir: dir})
			pids = append(pids, vm.Pid)
			files = append(files, vm.Socket, vm.logFile)
			for _, d := range vm.Disks {
				files = append(files, d.File)
			}
			for _, f := range files {
				if _, err := os.Stat(f); err != nil {
					t.Fatalf("while running: %v", err)
				}
			}
			switch how {
			case "killed":
				vm.Kill()
			case "relaunched":
				next := vm.Relaunch(t)
				pids = append(pids, next.Pid)
				files = append(files, next.logFile)
			}
		})
		for _, pid := range pids {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("%s: pid %d still exists after cleanup (kill 0: %v)", how, pid, err)
			}
		}
		for _, f := range files {
			if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %s left behind (%v)", how, f, err)
			}
		}
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Errorf("%s: dir not empty after cleanup: %v", how, left)
		}
	}
}

// TestRelaunch proves VM.Argv is the whole command line: the same VM
// starts again from it, with its disk contents, after the first process is
// gone.
func TestRelaunch(t *testing.T) {
	vm := Start(t, Options{})
	ctx := testContext(t)
	if _, err := vm.QemuIO(ctx, "dev1", "write -P 0x5a 0 4096"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.QemuIO(ctx, "dev1", "flush"); err != nil {
		t.Fatal(err)
	}
	vm.Kill()

	next := vm.Relaunch(t, "-S")
	if next.Pid == vm.Pid || next.Socket != vm.Socket {
		t.Errorf("relaunched pid %d socket %s; first pid %d socket %s", next.Pid, next.Socket, vm.Pid, vm.Socket)
	}
	if err := syscall.Kill(vm.Pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("first QEMU pid %d still exists: %v", vm.Pid, err)
	}
	if diff := cmp.Diff(append(append([]string(nil), vm.Argv...), "-S"), next.Argv); diff != "" {
		t.Errorf("Argv (-want +got):\n%s", diff)
	}
	if c, err := next.Counter(ctx); err != nil || c != 0 {
		t.Fatalf("counter of the relaunched guest under -S = %d, %v; want 0", c, err)
	}
	out, err := next.QemuIO(ctx, "dev1", "read -P 0x5a 0 4096")
	if err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Errorf("data written before the relaunch: %q, %v", out, err)
	}
	if _, err := next.HMP(ctx, "cont"); err != nil {
		t.Fatal(err)
	}
	if err := next.waitCounter(ctx, time.Now()); err != nil {
		t.Fatalf("relaunched guest does not count: %v\n%s", err, next.Output())
	}

	// A second relaunch ends the running second process itself and does
	// not keep the first relaunch's -S.
	third := next.Relaunch(t)
	if diff := cmp.Diff(vm.Argv, third.Argv); diff != "" {
		t.Errorf("Argv (-want +got):\n%s", diff)
	}
	select {
	case <-next.Exited():
	default:
		t.Error("Relaunch returned while the previous QEMU still ran")
	}
	if err := third.waitCounter(ctx, time.Now()); err != nil {
		t.Fatalf("third launch does not count: %v", err)
	}
}

// TestLongDirSocket: a directory too deep for a unix socket path gets its
// socket elsewhere, removed at cleanup too.
func TestLongDirSocket(t *testing.T) {
	Require(t)
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var sock string
	t.Run("vm", func(t *testing.T) {
		vm := Start(t, Options{Dir: dir, Disks: 1})
		sock = vm.Socket
		if len(sock) > 107 || strings.HasPrefix(sock, dir) {
			t.Errorf("socket %q", sock)
		}
	})
	if _, err := os.Stat(filepath.Dir(sock)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket dir %s left behind (%v)", filepath.Dir(sock), err)
	}
}

// outcomeTB records whether Require skipped or failed.
type outcomeTB struct {
	testing.TB
	skipped, failed bool
}

func (o *outcomeTB) Helper()               {}
func (o *outcomeTB) Skip(args ...any)      { o.skipped = true; runtime.Goexit() }
func (o *outcomeTB) Fatal(args ...any)     { o.failed = true; runtime.Goexit() }
func (o *outcomeTB) Fatalf(string, ...any) { o.failed = true; runtime.Goexit() }

func TestRequireWithoutQEMU(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no QEMU there
	t.Setenv(DirEnv, "")
	if Available() {
		t.Fatal("Available with an empty PATH")
	}
	for _, tt := range []struct {
		ci                  string
		wantSkip, wantFatal bool
	}{
		{ci: "", wantSkip: true},
		{ci: "false", wantSkip: true},
		{ci: "true", wantFatal: true},
	} {
		t.Setenv("CI", tt.ci)
		o := &outcomeTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			Require(o)
		}()
		<-done
		if o.skipped != tt.wantSkip || o.failed != tt.wantFatal {
			t.Errorf("CI=%q: skipped %v failed %v; want %v %v", tt.ci, o.skipped, o.failed, tt.wantSkip, tt.wantFatal)
		}
	}
}

// TestRequireWithoutQEMUDir: a DirEnv prefix without QEMU fails under CI
// even with qemu-system-x86_64 on PATH.
func TestRequireWithoutQEMUDir(t *testing.T) {
	t.Setenv(DirEnv, t.TempDir())
	t.Setenv("CI", "true")
	o := &outcomeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Require(o)
	}()
	<-done
	if !o.failed {
		t.Errorf("%s without QEMU under CI=true: skipped %v failed %v; want a failure", DirEnv, o.skipped, o.failed)
	}
}

func TestParseVersion(t *testing.T) {
	for _, tt := range []struct {
		out  string
		want QEMUVersion
	}{
		{"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n",
			QEMUVersion{7, 2, 22, "Debian 1:7.2+dfsg-7+deb12u18+b3"}},
		{"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n", QEMUVersion{10, 0, 2, "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}},
		{"QEMU emulator version 5.2.0 (Debian 1:5.2+dfsg-11+deb11u5)\n", QEMUVersion{5, 2, 0, "Debian 1:5.2+dfsg-11+deb11u5"}},
		{"QEMU emulator version 9.0.50 (v9.0.0-1234-gdeadbeef)\n", QEMUVersion{9, 0, 50, "v9.0.0-1234-gdeadbeef"}},
		{"QEMU emulator version 8.2.0\nCopyright (c) 2003-2023\n", QEMUVersion{8, 2, 0, ""}},
	} {
		got, err := parseVersion(tt.out)
		if err != nil {
			t.Errorf("parseVersion(%q): %v", tt.out, err)
			continue
		}
		if got != tt.want {
			t.Errorf("parseVersion(%q) = %+v, want %+v", tt.out, got, tt.want)
		}
	}
	if _, err := parseVersion("qemu-system-x86_64: unknown option\n"); err == nil {
		t.Error("parseVersion accepted output without a version")
	}
	v := QEMUVersion{Major: 10, Minor: 0, Micro: 2}
	if !v.AtLeast(9, 0) || !v.AtLeast(10, 0) || v.AtLeast(10, 1) || (QEMUVersion{Major: 5, Minor: 2}).AtLeast(7, 2) {
		t.Errorf("AtLeast wrong for %v", v)
	}
	if s := (QEMUVersion{5, 2, 0, "Debian 1:5.2+dfsg-11+deb11u5"}).String(); s != "5.2.0 (Debian 1:5.2+dfsg-11+deb11u5)" {
		t.Errorf("String() = %q", s)
	}
}

// TestQEMUDir checks how DirEnv selects the binary and its -L options, on
// a made-up prefix.
func TestQEMUDir(t *testing.T) {
	t.Setenv(DirEnv, "")
	q, err := selectedQEMU()
	if err != nil || q.binary != systemBinary || len(q.argv0()) != 1 {
		t.Fatalf("without %s: %+v, %v; want %s without -L", DirEnv, q, err, systemBinary)
	}

	prefix := t.TempDir()
	t.Setenv(DirEnv, prefix)
	if q, _ := selectedQEMU(); q.available() {
		t.Errorf("empty prefix: %s available", q.binary)
	}
	bin := filepath.Join(prefix, "usr", "bin", systemBinary)
	for _, d := range []string{filepath.Dir(bin), filepath.Join(prefix, "usr", "share", "seabios")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	q, err = selectedQEMU()
	if err != nil || !q.available() {
		t.Fatalf("%+v, %v: want available", q, err)
	}
	want := []string{bin, "-L", filepath.Join(prefix, "usr", "share", "seabios")}
	if diff := cmp.Diff(want, q.argv0()); diff != "" {
		t.Errorf("argv without wrapper (-want +got):\n%s", diff)
	}

	// The wrapper in bin/ wins; both data directories are searched, the
	// prefix's qemu first.
	wrapper := filepath.Join(prefix, "bin", systemBinary)
	for _, d := range []string{filepath.Dir(wrapper), filepath.Join(prefix, "usr", "share", "qemu")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	q, _ = selectedQEMU()
	want = []string{wrapper, "-L", filepath.Join(prefix, "usr", "share", "qemu"), "-L", filepath.Join(prefix, "usr", "share", "seabios")}
	if diff := cmp.Diff(want, q.argv0()); diff != "" {
		t.Errorf("argv with wrapper (-want +got):\n%s", diff)
	}
	if Binary() != wrapper {
		t.Errorf("Binary() = %q, want %q", Binary(), wrapper)
	}

	// A relative prefix is made absolute: Argv must not depend on the
	// directory QEMU is started in.
	t.Chdir(filepath.Dir(prefix))
	t.Setenv(DirEnv, filepath.Base(prefix))
	if q, _ := selectedQEMU(); q.binary != wrapper {
		t.Errorf("relative %s: binary %q, want %q", DirEnv, q.binary, wrapper)
	}
}

// TestVersionIsTheStartedQEMU proves the rig starts the QEMU Version
// reports: the one DirEnv selects, or the one on PATH.
func TestVersionIsTheStartedQEMU(t *testing.T) {
	v := Version(t)
	t.Logf("QEMU %s from %s", v, Binary())
	vm := Start(t, Options{Disks: 1})
	if vm.Argv[0] != Binary() {
		t.Errorf("Argv[0] = %q, want %q", vm.Argv[0], Binary())
	}
	var got struct {
		QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
		Package string                            `json:"package"`
	}
	if err := vm.Mon.Execute(testContext(t), "query-version", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.QEMU.Major != v.Major || got.QEMU.Minor != v.Minor || got.QEMU.Micro != v.Micro || strings.TrimSpace(got.Package) != v.Package {
		t.Errorf("query-version = %+v, Version = %+v", got, v)
	}
}

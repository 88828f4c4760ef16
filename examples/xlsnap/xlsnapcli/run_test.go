package xlsnapcli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
)

// runIn runs the program in-process.
func runIn(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var o, e bytes.Buffer
	code = Run(ctx, args, &o, &e, Config{})
	return code, o.String(), e.String()
}

// TestRunAgainstFake drives the commands in-process against the fake QEMU
// (no QEMU needed): names, listing formats, revert of the counter, delete.
func TestRunAgainstFake(t *testing.T) {
	srv, err := fakeqemu.Start(fakeqemu.Options{
		UUID:  "0b7e7a4e-58d4-4d0a-9a55-8e6f1d2c3b4a",
		Disks: []fakeqemu.Disk{{Node: "disk0", Device: "dev0", File: "/img/d0.qcow2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	sock := srv.Addr()
	st := filepath.Join(t.TempDir(), "store")
	steps := []struct {
		args       []string
		code       int
		stdout     string // exact, when not ""
		stderrHas  string
		stdoutHas  []string
		stdoutNone bool
	}{
		{args: []string{"snapshot-create", "-n", "s1", "-d", "one", sock}, stdout: "s1\n"},
		{args: []string{"snapshot-create", "--disk-only", "--n=s2", sock}, stdout: "s2\n"},
		{args: []string{"snapshot-list", "--tree", sock}, stdoutHas: []string{"s1  ", "\n└─ s2  ", " *\n"}},
		{args: []string{"snapshot-list", "--long", sock, "s2"}, stdoutHas: []string{"name:", "s2", "disk-only", "disk dev0: kind=internal file=/img/d0.qcow2"}},
		{args: []string{"snapshot-revert", "-n", "s1", "--paused", sock}, stdoutNone: true},
		{args: []string{"snapshot-revert", "-n", "s2", sock}, code: 1, stderrHas: `snapshot "s2"`},
		{args: []string{"snapshot-revert", "-n", "gone", sock}, code: 1, stderrHas: `snapshot "gone"`},
		{args: []string{"snapshot-revert", sock}, code: 2, stderrHas: "-n NAME is required"},
		{args: []string{"snapshot-create", "-n", "x", "--uuid"}, code: 2, stderrHas: "flag needs an argument"},
		{args: []string{"snapshot-delete", "-n", "s1", "--children", sock}, stdout: "s2\ns1\n"},
		{args: []string{"snapshot-list", "--json", sock}, stdout: "[]\n"},
		{args: []string{}, code: 2, stderrHas: "no command given"},
		{args: []string{"-h"}, code: 0, stderrHas: "usage: xlsnap"},
	}
	for _, s := range steps {
		args := append([]string{"--store", st}, s.args...)
		code, out, errOut := runIn(t, args...)
		if code != s.code {
			t.Fatalf("%q: exit %d, want %d\nstdout: %s\nstderr: %s", s.args, code, s.code, out, errOut)
		}
		if s.stdout != "" && out != s.stdout {
			t.Errorf("%q: stdout %q, want %q", s.args, out, s.stdout)
		}
		if s.stdoutNone && out != "" {
			t.Errorf("%q: stdout %q, want nothing", s.args, out)
		}
		for _, h := range s.stdoutHas {
			if !strings.Contains(out, h) {
				t.Errorf("%q: stdout lacks %q:\n%s", s.args, h, out)
			}
		}
		if !strings.Contains(errOut, s.stderrHas) {
			t.Errorf("%q: stderr %q lacks %q", s.args, errOut, s.stderrHas)
		}
		if code == 1 && strings.Count(errOut, "\n") != 1 {
			t.Errorf("%q: stderr is not one line: %q", s.args, errOut)
		}
		if code == 0 && s.stderrHas == "" && errOut != "" {
			t.Errorf("%q: unexpected stderr %q", s.args, errOut)
		}
	}
}

func TestParseArgsInterleaved(t *testing.T) {
	tests := []struct {
		args    []string
		pos     []string
		n       string
		force   bool
		wantErr bool
	}{
		{args: []string{"-n", "a", "DOM"}, pos: []string{"DOM"}, n: "a"},
		{args: []string{"DOM", "--n", "a", "--force"}, pos: []string{"DOM"}, n: "a", force: true},
		{args: []string{"DOM", "NAME", "-force"}, pos: []string{"DOM", "NAME"}, force: true},
		{args: []string{"--", "-n", "DOM"}, pos: []string{"-n", "DOM"}},
		{args: []string{"-n", "a", "--", "--force"}, pos: []string{"--force"}, n: "a"},
		{args: []string{"--nope", "DOM"}, wantErr: true},
	}
	for _, tt := range tests {
		fs := newFlagSet("t")
		n := fs.String("n", "", "")
		force := fs.Bool("force", false, "")
		pos, err := parseArgs(fs, tt.args)
		if tt.wantErr {
			if err == nil {
				t.Errorf("%q: no error", tt.args)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if diff := cmp.Diff(tt.pos, pos); diff != "" || *n != tt.n || *force != tt.force {
			t.Errorf("%q: pos %q n %q force %v; want %q %q %v", tt.args, pos, *n, *force, tt.pos, tt.n, tt.force)
		}
	}
}

func TestFormatting(t *testing.T) {
	clocks := map[time.Duration]string{
		0:                                  "00:00:00.000",
		1234 * time.Millisecond:            "00:00:01.234",
		(3*3600+25*60+7)*time.Second + 5e6: "03:25:07.005",
		(120 * time.Hour):                  "120:00:00.000",
	}
	for d, want := range clocks {
		if got := vmClock(d); got != want {
			t.Errorf("vmClock(%v) = %q, want %q", d, got, want)
		}
	}
	bars := []struct {
		p    vmsnap.Progress
		want string
	}{
		{vmsnap.Progress{Phase: vmsnap.PhaseSavingMemory, Bytes: 32 << 20, Total: 64 << 20}, "saving memory [#####     ]  50% 32.0/64.0 MiB"},
		{vmsnap.Progress{Phase: vmsnap.PhaseSavingMemory, Bytes: 70 << 20, Total: 64 << 20}, "saving memory [##########] 100% 64.0/64.0 MiB"},
		{vmsnap.Progress{Phase: vmsnap.PhaseSavingMemory}, ""},
		{vmsnap.Progress{Phase: vmsnap.PhaseSnappingDisks, Bytes: 1, Total: 2}, ""},
	}
	for _, b := range bars {
		if got := progressLine(b.p, 10); got != b.want {
			t.Errorf("progressLine(%+v) = %q, want %q", b.p, got, b.want)
		}
	}
	if got := oneLine("2 errors occurred:\n\t* disk dev0: x\n\t* disk dev1: y\n\n"); got != "2 errors occurred:; disk dev0: x; disk dev1: y" {
		t.Errorf("oneLine = %q", got)
	}
	// --json of a snapshot with every field set.
	s := &vmsnap.DomainSnapshot{
		Name: "n", Description: "d", CreationTime: time.Date(2024, 5, 6, 7, 8, 9, 0, time.FixedZone("x", 3600)),
		State: vmsnap.StateRunning, Parent: "p", Current: true,
		Memory: vmsnap.Memory{Kind: vmsnap.MemoryExternal, File: "/m/n.save"},
		Disks: []vmsnap.DiskSnapshot{{Device: "dev0", File: "/i/a.qcow2", Kind: vmsnap.DiskExternal, Overlay: "/i/a.n.qcow2",
			VMStateSize: 4096, Date: time.Unix(1700000000, 0), VMClock: 1500 * time.Millisecond}},
		Downtime: 12500 * time.Microsecond,
	}
	var buf bytes.Buffer
	if err := printJSON(&buf, &vmsnap.Listing{Snapshots: []*vmsnap.DomainSnapshot{s}}, nil); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{{
		"name": "n", "description": "d", "creation_time": "2024-05-06T06:08:09Z", "state": "running", "parent": "p",
		"current": true, "memory": map[string]any{"kind": "external", "node": "", "file": "/m/n.save"},
		"disks": []any{map[string]any{"device": "dev0", "file": "/i/a.qcow2", "kind": "external", "id": "", "name": "",
			"overlay": "/i/a.n.qcow2", "vm_state_size": 4096.0, "date": "2023-11-14T22:13:20Z", "vm_clock": "00:00:01.500"}},
		"problems": []any{}, "downtime_ms": 12.5,
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("--json (-want +got):\n%s", diff)
	}
}

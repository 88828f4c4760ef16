package hmp

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmsnap/vmsnap/qmp"
)

// fakeMonitor answers human-monitor-command from a table of outputs and
// query-status from running; it records every command it receives.
type fakeMonitor struct {
	mu       sync.Mutex
	outputs  map[string]string // HMP command line -> output
	running  bool
	failWith error // returned by every Execute when set
	calls    []string
}

var _ qmp.Monitor = (*fakeMonitor)(nil)

func (f *fakeMonitor) Execute(ctx context.Context, command string, args, result any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failWith != nil {
		return f.failWith
	}
	var reply any
	switch command {
	case "human-monitor-command":
		line := args.(map[string]string)["command-line"]
		f.calls = append(f.calls, line)
		out, ok := f.outputs[line]
		if !ok {
			return errors.New("fake: no output for " + line)
		}
		reply = out
	case "query-status":
		f.calls = append(f.calls, command)
		reply = map[string]any{"running": f.running, "status": "running"}
	default:
		f.calls = append(f.calls, command)
		reply = map[string]any{}
	}
	if result == nil {
		return nil
	}
	b, err := json.Marshal(reply)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, result)
}

func (f *fakeMonitor) Subscribe(ctx context.Context) (<-chan qmp.Event, error) {
	return nil, errors.New("fake: no events")
}

func (f *fakeMonitor) Close() error { return nil }

func (f *fakeMonitor) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Outputs captured from QEMU 7.2's HMP through human-monitor-command
// (5.2's and 10.0's where they say so).
func TestRunClassifiesOutput(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		output  string
		wantErr bool
		want    error // sentinel, when wantErr
	}{
		{name: "savevm ok", cmdline: "savevm s1", output: ""},
		{name: "xp", cmdline: "xp /1gx 0x10000", output: "0000000000010000: 0x00000000008c3aa7\r\n"},
		{name: "info status", cmdline: "info status", output: "VM status: running\r\n"},
		{name: "snapshot table", cmdline: "info snapshots", output: readTestdata(t, "partial.txt")},
		{name: "no snapshots", cmdline: "info snapshots", output: "There is no snapshot available.\r\n"},
		{
			name: "tags that look like errors", cmdline: "info snapshots",
			output: "List of snapshots present on all disks:\r\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\r\n" +
				"--        Error:            712 KiB 2026-11-26 07:20:10 00:00:01.583           \r\n" +
				"--        unknown           712 KiB 2026-11-26 07:20:10 00:00:01.583           \r\n",
		},
		{
			name: "loadvm missing", cmdline: "loadvm nope",
			output:  "Error: Snapshot 'nope' does not exist in one or more devices\r\n",
			wantErr: true, want: ErrSnapshotNotFound,
		},
		{
			name: "qemu 5.2 loadvm missing", cmdline: "loadvm nope",
			output:  "Error: Device 'disk0' does not have the requested snapshot 'nope'\r\n",
			wantErr: true, want: ErrSnapshotNotFound,
		},
		{
			name: "qemu 5.2 loadvm partial", cmdline: "loadvm only1",
			output:  "Error: Device 'disk1' does not have the requested snapshot 'only1'\r\n",
			wantErr: true, want: ErrSnapshotNotFound,
		},
		{name: "qemu 10.0 snapshot table", cmdline: "info snapshots", output: readTestdata(t, "qemu10-odd-tags.txt")},
		{
			name: "qemu 10.0 tags that look like errors", cmdline: "info snapshots",
			output: "List of snapshots present on all disks:\r\nID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT\r\n" +
				"--      Error:            716 KiB 2026-12-01 01:51:15  0000:00:00.520         --\r\n" +
				"--      unknown           716 KiB 2026-12-01 01:51:15  0000:00:00.520         --\r\n",
		},
		{
			name: "loadvm disk-only", cmdline: "loadvm donly",
			output:  "Error: This is a disk-only snapshot. Revert to it  offline using qemu-img\r\n",
			wantErr: true, want: ErrDiskOnlySnapshot,
		},
		{
			name: "savevm raw disk", cmdline: "savevm s9",
			output:  "Error: Device 'raw' is writable but does not support snapshots\r\n",
			wantErr: true, want: ErrNoSnapshotDevice,
		},
		{
			name: "savevm no disk", cmdline: "savevm x",
			output:  "Error: no block device can store vmstate for snapshot\r\n",
			wantErr: true, want: ErrNoSnapshotDevice,
		},
		{
			name: "info snapshots no disk", cmdline: "info snapshots",
			output:  "no block device can store vmstate for snapshot\r\n",
			wantErr: true, want: ErrNoSnapshotDevice,
		},
		{
			name: "unknown command", cmdline: "foo",
			output:  "unknown command: 'foo'\r\n",
			wantErr: true, want: ErrUnknownCommand,
		},
		{
			name: "unknown info", cmdline: "info foo",
			output:  "unknown command: 'info foo'\r\n",
			wantErr: true, want: ErrUnknownCommand,
		},
		{
			name: "missing argument", cmdline: "loadvm",
			output:  "loadvm: string expected\r\nTry \"help loadvm\" for more information\r\n",
			wantErr: true,
		},
		{
			name: "extra argument", cmdline: "savevm a b",
			output:  "savevm: extraneous characters at the end of line\r\nTry \"help savevm\" for more information\r\n",
			wantErr: true,
		},
		{
			name: "qemu-io missing device", cmdline: `qemu-io -d nodev "read 0 512"`,
			output:  "Error: Device 'nodev' not found\r\n",
			wantErr: true,
		},
		{
			name: "qemu-io wrong device kind", cmdline: `qemu-io -d dev1 "read 0 512"`,
			output:  "Error: Device does not have a block device backend\r\n",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMonitor{outputs: map[string]string{tt.cmdline: tt.output}}
			out, err := Run(context.Background(), m, tt.cmdline)
			if out != tt.output {
				t.Errorf("output = %q, want %q", out, tt.output)
			}
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				return
			}
			var he *Error
			if !errors.As(err, &he) {
				t.Fatalf("Run: err = %v, want *Error", err)
			}
			want := &Error{Command: tt.cmdline, Output: strings.TrimSpace(strings.ReplaceAll(tt.output, "\r\n", "\n"))}
			if he.Command != want.Command || he.Output != want.Output {
				t.Errorf("Error = %+v, want %+v", he, want)
			}
			if errors.Unwrap(err) != tt.want {
				t.Errorf("Unwrap = %v, want %v", errors.Unwrap(err), tt.want)
			}
			if IsNotFound(err) != (tt.want == ErrSnapshotNotFound) {
				t.Errorf("IsNotFound = %v", IsNotFound(err))
			}
			if !strings.Contains(err.Error(), tt.cmdline) {
				t.Errorf("error %q does not name the command %q", err, tt.cmdline)
			}
		})
	}
}

func TestRunTransportError(t *testing.T) {
	qe := &qmp.Error{Command: "human-monitor-command", Class: "GenericError", Desc: "boom"}
	m := &fakeMonitor{failWith: qe}
	_, err := Run(context.Background(), m, "info status")
	var got *qmp.Error
	if !errors.As(err, &got) || got != qe {
		t.Fatalf("err = %v, want the *qmp.Error wrapped", err)
	}
	var he *Error
	if errors.As(err, &he) {
		t.Errorf("transport error reported as HMP output error: %v", err)
	}
	if !strings.Contains(err.Error(), "info status") {
		t.Errorf("error %q does not name the command", err)
	}
}

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseSnapshots(t *testing.T) {
	at := func(s string) time.Time {
		d, err := time.ParseInLocation(time.DateTime, s, time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	clock := func(s string) time.Duration {
		h, rest, _ := strings.Cut(s, ":")
		d, err := time.ParseDuration(h + "h" + strings.Replace(strings.Replace(rest, ":", "m", 1), ".", "s", 1) + "ms")
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	snap := func(id, tag string, size uint64, date, vmclock string) Snapshot {
		return Snapshot{ID: id, Tag: tag, VMStateSize: size, Date: at(date), VMClock: clock(vmclock), ICount: -1}
	}
	partial := func(s Snapshot) Snapshot { s.Partial = true; return s }
	withICount := func(s Snapshot, n int64) Snapshot { s.ICount = n; return s }
	onDevice := func(s Snapshot, dev string) Snapshot { s.Device = dev; return s }
	long1 := strings.Repeat("0123456789", 25) + "01234"
	long2 := strings.Repeat("0123456789", 12) + "abcdefghij"

	tests := []struct {
		file string
		want []Snapshot
	}{
		{"none.txt", []Snapshot{}},
		{"one.txt", []Snapshot{snap("", "s1", 824<<10, "2026-11-26 07:19:53", "0:00:01.571")}},
		{"partial.txt", []Snapshot{
			snap("", "s1", 712<<10, "2026-11-26 07:20:45", "0:00:00.388"),
			snap("", "2", 712<<10, "2026-11-26 07:20:45", "0:00:00.388"),
			partial(snap("1", "only1", 0, "2026-11-26 07:20:45", "0:00:00.386")),
		}},
		{"all-partial.txt", []Snapshot{
			partial(snap("1", "s1", 712<<10, "2026-11-26 07:20:45", "0:00:00.388")),
			partial(snap("2", "2", 712<<10, "2026-11-26 07:20:45", "0:00:00.388")),
			partial(snap("3", "1", 712<<10, "2026-11-26 07:20:45", "0:00:00.389")),
			partial(snap("4", long1, 712<<10, "2026-11-26 07:20:45", "0:00:00.389")),
			partial(snap("5", long2, 712<<10, "2026-11-26 07:20:45", "0:00:00.389")),
			partial(snap("1", "only1", 0, "2026-11-26 07:20:45", "0:00:00.386")),
			partial(snap("2", "s1", 0, "2026-11-26 07:20:45", "0:00:00.388")),
			partial(snap("3", "2", 0, "2026-11-26 07:20:45", "0:00:00.388")),
			partial(snap("4", "1", 0, "2026-11-26 07:20:45", "0:00:00.389")),
			partial(snap("5", long1, 0, "2026-11-26 07:20:45", "0:00:00.389")),
			partial(snap("6", long2, 0, "2026-11-26 07:20:45", "0:00:00.389")),
		}},
		{"odd-tags.txt", []Snapshot{
			snap("", "s1", 712<<10, "2026-11-26 07:20:10", "0:00:01.583"),
			snap("", "a b", 712<<10, "2026-11-26 07:20:10", "0:00:01.583"),
			snap("", "a;quit", 712<<10, "2026-11-26 07:20:10", "0:00:01.583"),
			snap("", "'q'", 712<<10, "2026-11-26 07:20:10", "0:00:01.583"),
			snap("", "-h", 712<<10, "2026-11-26 07:20:10", "0:00:01.583"),
		}},
		{"disk-only.txt", []Snapshot{
			snap("", "donly", 0, "2026-11-26 07:23:58", "0:00:00.072"),
			snap("", `a"b`, 712<<10, "2026-11-26 07:23:58", "0:00:00.083"),
		}},
		{"icount.txt", []Snapshot{
			withICount(snap("", "ic", 3732931, "2026-11-26 07:25:36", "0:00:00.056"), 55646168),
		}},
		{"qemu10-none.txt", []Snapshot{}},
		{"qemu10-one.txt", []Snapshot{snap("", "s1", 716<<10, "2026-12-01 01:51:15", "0:00:00.520")}},
		{"qemu10-odd-tags.txt", []Snapshot{
			snap("", "s1", 716<<10, "2026-12-01 01:51:15", "0:00:00.520"),
			snap("", "a;quit", 716<<10, "2026-12-01 01:51:15", "0:00:00.522"),
			snap("", "-h", 716<<10, "2026-12-01 01:51:15", "0:00:00.522"),
			snap("", "1", 716<<10, "2026-12-01 01:51:15", "0:00:00.522"),
			snap("", long1, 716<<10, "2026-12-01 01:51:15", "0:00:00.522"),
			snap("", long2, 716<<10, "2026-12-01 01:51:15", "0:00:00.522"),
			snap("", "donly", 0, "2026-12-01 01:51:15", "0:00:00.522"),
			partial(snap("7", "only1", 0, "2026-12-01 01:51:15", "0:00:00.522")),
		}},
		{"qemu10-partial-drives.txt", []Snapshot{
			snap("", "s1", 716<<10, "2026-12-01 01:51:32", "0:00:01.066"),
			onDevice(partial(snap("2", "only0", 0, "2026-12-01 01:51:32", "0:00:01.068")), "disk0"),
			onDevice(partial(snap("2", "only1", 0, "2026-12-01 01:51:32", "0:00:01.092")), "disk1"),
		}},
		{"qemu10-icount.txt", []Snapshot{
			withICount(snap("", "s1", 717<<10, "2026-12-01 01:51:44", "0:00:00.824"), 7707238),
			onDevice(partial(withICount(snap("2", "only0", 0, "2026-12-01 01:51:44", "0:00:00.835"), 7707238)), "disk0"),
			onDevice(partial(withICount(snap("2", "only1", 0, "2026-12-01 01:51:44", "0:00:00.835"), 7707238)), "disk1"),
		}},
		{"qemu52-odd-tags.txt", []Snapshot{
			snap("", "s1", 692<<10, "2026-12-01 01:51:24", "0:00:00.522"),
			snap("", "a;quit", 692<<10, "2026-12-01 01:51:24", "0:00:00.523"),
			snap("", "-h", 692<<10, "2026-12-01 01:51:24", "0:00:00.523"),
			snap("", "1", 692<<10, "2026-12-01 01:51:24", "0:00:00.523"),
			snap("", long1, 692<<10, "2026-12-01 01:51:24", "0:00:00.523"),
			snap("", long2, 692<<10, "2026-12-01 01:51:24", "0:00:00.523"),
			snap("", "donly", 0, "2026-12-01 01:51:24", "0:00:00.523"),
			partial(snap("7", "only1", 0, "2026-12-01 01:51:24", "0:00:00.523")),
		}},
		{"qemu52-partial-drives.txt", []Snapshot{
			snap("", "s1", 692<<10, "2026-12-01 01:51:35", "0:00:01.061"),
			onDevice(partial(snap("2", "only0", 0, "2026-12-01 01:51:35", "0:00:01.062")), "disk0"),
			onDevice(partial(snap("2", "only1", 0, "2026-12-01 01:51:35", "0:00:01.064")), "disk1"),
		}},
		{"mib.txt", []Snapshot{
			snap("", "ic", 3711959, "2026-11-26 07:25:27", "0:00:00.003"),
			snap("", "dsk", 0, "2026-11-26 07:25:28", "0:00:00.003"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := parseSnapshots(readTestdata(t, tt.file), time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseSnapshots (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseSnapshotRowFields(t *testing.T) {
	const prefix = "List of snapshots present on all disks:\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n"
	tests := []struct {
		row  string
		want Snapshot
	}{
		{
			// icount column present, clock over 99 hours, fractional MiB.
			row: "--        big               1.2 MiB 2026-01-02 03:04:05 123:45:06.789       5678",
			want: Snapshot{Tag: "big", VMStateSize: 1258291, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				VMClock: 123*time.Hour + 45*time.Minute + 6789*time.Millisecond, ICount: 5678},
		},
		{
			// an ID longer than its column pushes the tag right.
			row: "1234567890 t                 999 B 2026-01-02 03:04:05 00:00:00.001           ",
			want: Snapshot{ID: "1234567890", Tag: "t", VMStateSize: 999, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				VMClock: time.Millisecond, ICount: -1},
		},
		{
			// a tag that ends like a size column.
			row:  "--        x 5 B                 0 B 2026-01-02 03:04:05 00:00:00.000           ",
			want: Snapshot{Tag: "x 5 B", Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ICount: -1},
		},
		{
			row:  "--        g                 2.5 GiB 2026-01-02 03:04:05 00:00:00.000           ",
			want: Snapshot{Tag: "g", VMStateSize: 5 << 29, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ICount: -1},
		},
	}
	const prefix10 = "List of snapshots present on all disks:\nID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT\n"
	for _, tt := range []struct {
		row  string
		want Snapshot
	}{
		{
			// QEMU 10.0: a four-digit hour, an icount.
			row: "--      big               1.2 MiB 2026-01-02 03:04:05  0123:45:06.789       5678",
			want: Snapshot{Tag: "big", VMStateSize: 1258291, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				VMClock: 123*time.Hour + 45*time.Minute + 6789*time.Millisecond, ICount: 5678},
		},
		{
			// QEMU 10.0: an ID longer than its 7 columns pushes the tag right.
			row: "12345678 t                 999 B 2026-01-02 03:04:05  0000:00:00.001         --",
			want: Snapshot{ID: "12345678", Tag: "t", VMStateSize: 999, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				VMClock: time.Millisecond, ICount: -1},
		},
		{
			row:  "1234567 x 5 B                 0 B 2026-01-02 03:04:05  0000:00:00.000         --",
			want: Snapshot{ID: "1234567", Tag: "x 5 B", Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ICount: -1},
		},
	} {
		tests = append(tests, struct {
			row  string
			want Snapshot
		}{prefix10 + tt.row, tt.want})
	}
	for _, tt := range tests {
		row := tt.row
		if !strings.HasPrefix(row, "List of") {
			row = prefix + row
		}
		got, err := parseSnapshots(row+"\n", time.UTC)
		if err != nil {
			t.Errorf("%q: %v", tt.row, err)
			continue
		}
		if diff := cmp.Diff([]Snapshot{tt.want}, got); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tt.row, diff)
		}
	}
}

func TestParseSnapshotsRejectsGarbage(t *testing.T) {
	for _, out := range []string{
		"something else\n",
		"List of snapshots present on all disks:\nID        TAG\n--        s1   garbage\n",
		"List of snapshots present on all disks:\n--        s1                712 KiB 2026-13-40 07:19:53 00:00:01.571\n",
		"List of snapshots present on all disks:\n--        s1                712 XB 2026-11-26 07:19:53 00:00:01.571\n",
		"List of snapshots present on all disks:\n--\n",
		// a row before the header
		"List of snapshots present on all disks:\n--        s1                712 KiB 2026-11-26 07:19:53 00:00:01.571\n",
		// a 10.0 row under a 7.2 header
		"List of snapshots present on all disks:\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n" +
			"1       s1                716 KiB 2026-12-01 01:51:15  0000:00:00.520         --\n",
	} {
		if got, err := parseSnapshots(out, time.UTC); err == nil {
			t.Errorf("parseSnapshots(%q) = %+v, want an error", out, got)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"s1", true},
		{"1", true},
		{"a;quit", true},
		{"snap-2026.11.26_07:40", true},
		{"x#y$z%{}[]<>|&*?~^`@!=+,/", true},
		{strings.Repeat("x", MaxNameLen), true},
		{"", false},
		{strings.Repeat("x", MaxNameLen+1), false},
		{"a b", false},
		{"a; quit", false},
		{"a\nquit", false},
		{"a\rquit", false},
		{"a\tb", false},
		{"a\x00b", false},
		{"a\x7fb", false},
		{"-h", false},
		{"-", false},
		{`"x"`, false},
		{`a"b`, false},
		{"'q'", false},
		{`a\b`, false},
		{"été", false},
		{"a\u00a0b", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if tt.ok && err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", tt.name, err)
		}
		if !tt.ok && !errors.Is(err, ErrUnsafeName) {
			t.Errorf("ValidateName(%q) = %v, want ErrUnsafeName", tt.name, err)
		}
	}
}

func TestHelpersRefuseUnsafeNamesBeforeQEMU(t *testing.T) {
	helpers := map[string]func(context.Context, qmp.Monitor, string) error{
		"SaveVM": SaveVM, "LoadVM": LoadVM, "DelVM": DelVM,
	}
	for hname, h := range helpers {
		for _, name := range []string{"a; quit", "a\nquit", "-h", "", `"x`} {
			m := &fakeMonitor{}
			if err := h(context.Background(), m, name); !errors.Is(err, ErrUnsafeName) {
				t.Errorf("%s(%q) = %v, want ErrUnsafeName", hname, name, err)
			}
			if calls := m.recorded(); len(calls) != 0 {
				t.Errorf("%s(%q) sent %q", hname, name, calls)
			}
		}
	}
}

func TestLoadVMResumesAfterFailedCheck(t *testing.T) {
	notFound := "Error: Snapshot 'x' does not exist in one or more devices\r\n"
	loadFailed := "Error: Error -5 while loading VM state\r\n"
	tests := []struct {
		name    string
		running bool
		output  string
		want    []string
	}{
		{"success", true, "", []string{"query-status", "loadvm x"}},
		{"not found while running", true, notFound, []string{"query-status", "loadvm x", "cont"}},
		{"not found while paused", false, notFound, []string{"query-status", "loadvm x"}},
		{"load failed midway", true, loadFailed, []string{"query-status", "loadvm x"}},
		{"qemu 5.2 not found while running", true, "Error: Device 'disk0' does not have the requested snapshot 'x'\r\n",
			[]string{"query-status", "loadvm x", "cont"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMonitor{running: tt.running, outputs: map[string]string{"loadvm x": tt.output}}
			err := LoadVM(context.Background(), m, "x")
			if (err != nil) != (tt.output != "") {
				t.Errorf("LoadVM = %v", err)
			}
			if diff := cmp.Diff(tt.want, m.recorded()); diff != "" {
				t.Errorf("commands (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDelVMMissing(t *testing.T) {
	m := &fakeMonitor{outputs: map[string]string{
		"info snapshots": readTestdata(t, "partial.txt"),
		"delvm only1":    "",
	}}
	if err := DelVM(context.Background(), m, "nope"); !IsNotFound(err) {
		t.Errorf("DelVM(nope) = %v, want not found", err)
	}
	if err := DelVM(context.Background(), m, "only1"); err != nil {
		t.Errorf("DelVM of a partial snapshot: %v", err)
	}
	want := []string{"info snapshots", "info snapshots", "delvm only1"}
	if diff := cmp.Diff(want, m.recorded()); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}

package vmsnap

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
)

// memFake is a fake QEMU with a connected client and its probed features.
type memFake struct {
	srv  *fakeqemu.Server
	mon  *qmp.Client
	feat *qmp.Features
}

func startMemFake(t *testing.T, opts fakeqemu.Options) *memFake {
	t.Helper()
	srv, err := fakeqemu.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Dial(ctx, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	feat, err := qmp.Probe(ctx, mon)
	if err != nil {
		t.Fatal(err)
	}
	return &memFake{srv: srv, mon: mon, feat: feat}
}

// migrationSettings is what saveMemory must leave as it found it.
type migrationSettings struct {
	Params map[string]json.RawMessage
	Caps   map[string]bool
}

func readMigrationSettings(t *testing.T, mon qmp.Monitor) migrationSettings {
	t.Helper()
	ctx := context.Background()
	var s migrationSettings
	if err := mon.Execute(ctx, "query-migrate-parameters", nil, &s.Params); err != nil {
		t.Fatal(err)
	}
	caps, err := queryCapabilities(ctx, mon)
	if err != nil {
		t.Fatal(err)
	}
	s.Caps = caps
	return s
}

// fdsOpenOn counts this process's descriptors open on path; the fake QEMU
// runs in the test process, so its descriptors count too.
func fdsOpenOn(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && (target == path || target == path+" (deleted)") {
			n++
		}
	}
	return n
}

// waitNoFDs fails the test unless every descriptor on path is closed
// within a second (the fake's migration goroutine closes its copy just
// after reporting "completed").
func waitNoFDs(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for fdsOpenOn(t, path) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors still open on %s", fdsOpenOn(t, path), path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// progressLog records progress calls.
type progressLog struct {
	mu    sync.Mutex
	calls [][2]uint64
}

func (p *progressLog) record(done, total uint64) {
	p.mu.Lock()
	p.calls = append(p.calls, [2]uint64{done, total})
	p.mu.Unlock()
}

func (p *progressLog) get() [][2]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// noFiles hides a monitor's FileSender capability.
type noFiles struct{ qmp.Monitor }

func TestSaveMemoryFake(t *testing.T) {
	const memBytes = 4 << 20
	tests := []struct {
		name        string
		paused      bool
		mode        memoryMode
		wantMode    memoryMode
		wantStatus  string
		postmigrate bool
	}{
		{name: "running guest, stopped mode", mode: memoryStopped, wantMode: memoryStopped, wantStatus: "running"},
		{name: "running guest, background", mode: memoryBackground, wantMode: memoryBackground, wantStatus: "running"},
		{name: "paused guest", paused: true, mode: memoryStopped, wantMode: memoryStopped, wantStatus: "postmigrate", postmigrate: true},
		{name: "paused guest, live mode asked", paused: true, mode: memoryBackground, wantMode: memoryStopped, wantStatus: "postmigrate", postmigrate: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startMemFake(t, fakeqemu.Options{Paused: tc.paused, MemoryBytes: memBytes})
			ctx := context.Background()
			before := readMigrationSettings(t, f.mon)
			path := filepath.Join(t.TempDir(), "mem.vmstate")
			var prog progressLog
			var atStopStatus []string
			var counterAtStop uint64
			res, err := saveMemory(ctx, f.mon, f.feat, path, tc.mode, prog.record, func(ctx context.Context) error {
				atStopStatus = append(atStopStatus, f.srv.Status())
				counterAtStop = f.srv.Counter()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"paused"}, atStopStatus); diff != "" {
				t.Errorf("guest state when atStop ran (-want +got):\n%s", diff)
			}
			if res.Mode != tc.wantMode || res.Postmigrate != tc.postmigrate {
				t.Errorf("result mode %v postmigrate %v, want %v %v", res.Mode, res.Postmigrate, tc.wantMode, tc.postmigrate)
			}
			if got := f.srv.Status(); got != tc.wantStatus {
				t.Errorf("guest %s after the save, want %s", got, tc.wantStatus)
			}
			// The guest was stopped only if it ran; the downtime says so.
			if tc.paused != (res.Downtime == 0) {
				t.Errorf("downtime %v for a guest paused=%v", res.Downtime, tc.paused)
			}

			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 || fi.Size() != memBytes || res.Bytes != memBytes {
				t.Errorf("file mode %v size %d, result bytes %d; want 0600, %d", fi.Mode().Perm(), fi.Size(), res.Bytes, memBytes)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(data[:4]) != fakeqemu.StreamMagic {
				t.Errorf("stream starts %q", data[:4])
			}
			if got := binary.LittleEndian.Uint64(data[len(data)-8:]); got != counterAtStop {
				t.Errorf("stream holds counter %d, the guest was at %d when atStop ran", got, counterAtStop)
			}

			calls := prog.get()
			if len(calls) == 0 || calls[len(calls)-1] != [2]uint64{memBytes, memBytes} {
				t.Errorf("progress calls %v, want the last to be (%d, %d)", calls, memBytes, memBytes)
			}
			for i := 1; i < len(calls); i++ {
				if calls[i][0] < calls[i-1][0] {
					t.Errorf("progress went back: %v", calls)
				}
			}
			if diff := cmp.Diff(before, readMigrationSettings(t, f.mon)); diff != "" {
				t.Errorf("migration settings changed (-before +after):\n%s", diff)
			}
			waitNoFDs(t, path)
			// Nothing registered with getfd is left in QEMU.
			if !slices.Contains(f.srv.Commands(), "closefd") {
				t.Error("saveMemory did not make sure the descriptor is closed in QEMU")
			}
		})
	}
}

// TestSaveMemoryFakeSetsUnlimitedBandwidth checks the bandwidth and
// capabilities the migration ran with, from inside atStop of a background
// save (the migration has not started yet) and of a stopped one.
func TestSaveMemoryFakeSetsUnlimitedBandwidth(t *testing.T) {
	for _, mode := range []memoryMode{memoryStopped, memoryBackground} {
		t.Run(mode.String(), func(t *testing.T) {
			f := startMemFake(t, fakeqemu.Options{MemoryBytes: 1 << 20})
			// A capability that would change the stream is on before.
			if err := setCapabilities(context.Background(), f.mon, map[string]bool{"xbzrle": true}); err != nil {
				t.Fatal(err)
			}
			before := readMigrationSettings(t, f.mon)
			var during migrationSettings
			path := filepath.Join(t.TempDir(), "mem")
			_, err := saveMemory(context.Background(), f.mon, f.feat, path, mode, nil, func(ctx context.Context) error {
				during = readMigrationSettings(t, f.mon)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := string(during.Params["max-bandwidth"]), "9223372036854775807"; got != want {
				t.Errorf("max-bandwidth during the save %s, want %s", got, want)
			}
			want := map[string]bool{}
			for name := range before.Caps {
				want[name] = name == capEvents || (name == capBackgroundSnapshot && mode == memoryBackground)
			}
			if diff := cmp.Diff(want, during.Caps); diff != "" {
				t.Errorf("capabilities during the save (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, readMigrationSettings(t, f.mon)); diff != "" {
				t.Errorf("settings not restored (-before +after):\n%s", diff)
			}
		})
	}
}

// TestSaveMemoryFakeRefusals: what saveMemory refuses touches nothing.
func TestSaveMemoryFakeRefusals(t *testing.T) {
	tests := []struct {
		name    string
		profile fakeqemu.Profile
		mode    memoryMode
		mon     func(*qmp.Client) qmp.Monitor
		setup   func(t *testing.T, f *memFake, path string)
		want    error
		status  string
	}{
		{name: "monitor without descriptor passing", mon: func(c *qmp.Client) qmp.Monitor { return noFiles{c} }, want: ErrUnsupported, status: "running"},
		{name: "pre-copy without pause-before-switchover", mode: memoryPrecopy, want: ErrUnsupported, status: "running"},
		{name: "background on QEMU 5.2", profile: fakeqemu.QEMU52, mode: memoryBackground, want: ErrUnsupported, status: "running"},
		{name: "file exists", want: os.ErrExist, status: "running", setup: func(t *testing.T, f *memFake, path string) {
			if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "guest in postmigrate", want: ErrUnsupported, status: "postmigrate", setup: func(t *testing.T, f *memFake, path string) {
			if _, err := saveMemory(context.Background(), f.mon, f.feat, path+".first", memoryStopped, nil, nil); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			paused := tc.status == "postmigrate"
			f := startMemFake(t, fakeqemu.Options{Profile: tc.profile, Paused: paused, MemoryBytes: 1 << 20})
			path := filepath.Join(t.TempDir(), "mem")
			if tc.setup != nil {
				tc.setup(t, f, path)
			}
			var mon qmp.Monitor = f.mon
			if tc.mon != nil {
				mon = tc.mon(f.mon)
			}
			before := readMigrationSettings(t, f.mon)
			atStop := 0
			_, err := saveMemory(context.Background(), mon, f.feat, path, tc.mode, nil, func(context.Context) error { atStop++; return nil })
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if atStop != 0 {
				t.Error("atStop ran")
			}
			if got := f.srv.Status(); got != tc.status {
				t.Errorf("guest %s, want %s", got, tc.status)
			}
			if tc.want == os.ErrExist {
				if b, _ := os.ReadFile(path); string(b) != "keep" {
					t.Errorf("existing file changed to %q", b)
				}
			} else if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("file left: %v", err)
			}
			if diff := cmp.Diff(before, readMigrationSettings(t, f.mon)); diff != "" {
				t.Errorf("settings changed (-before +after):\n%s", diff)
			}
			if slices.Contains(f.srv.Commands(), "migrate") && tc.status != "postmigrate" {
				t.Error("migrate was sent")
			}
		})
	}
}

// TestSaveMemoryFakeFailures injects a failure at every step: the save
// fails naming it, the file is gone, the guest runs, the settings are
// restored and no descriptor stays open.
func TestSaveMemoryFakeFailures(t *testing.T) {
	errAtStop := errors.New("disk snapshot failed")
	tests := []struct {
		name   string
		mode   memoryMode
		fault  *fakeqemu.Fault
		atStop error
		want   string
	}{
		{name: "set parameters", fault: &fakeqemu.Fault{Command: "migrate-set-parameters", Desc: "no"}, want: "set max-bandwidth"},
		{name: "set capabilities", fault: &fakeqemu.Fault{Command: "migrate-set-capabilities", Nth: 1, Desc: "no"}, want: "migrate-set-capabilities"},
		{name: "getfd", fault: &fakeqemu.Fault{Command: "getfd", Desc: "no"}, want: "pass memory file"},
		{name: "stop", fault: &fakeqemu.Fault{Command: "stop", Desc: "no"}, want: "stop guest"},
		{name: "migrate", fault: &fakeqemu.Fault{Command: "migrate", Desc: "no"}, want: "migrate:"},
		{name: "atStop, stopped mode", atStop: errAtStop, want: "at guest stop"},
		{name: "atStop, background", mode: memoryBackground, atStop: errAtStop, want: "at guest stop"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startMemFake(t, fakeqemu.Options{MemoryBytes: 1 << 20})
			before := readMigrationSettings(t, f.mon)
			if tc.fault != nil {
				f.srv.Fail(*tc.fault)
			}
			path := filepath.Join(t.TempDir(), "mem")
			_, err := saveMemory(context.Background(), f.mon, f.feat, path, tc.mode, nil, func(context.Context) error { return tc.atStop })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one mentioning %q", err, tc.want)
			}
			if tc.atStop != nil && !errors.Is(err, tc.atStop) {
				t.Errorf("err %v does not wrap atStop's error", err)
			}
			f.srv.ClearFaults()
			if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("partial file left: %v", serr)
			}
			if got := f.srv.Status(); got != "running" {
				t.Errorf("guest %s, want running", got)
			}
			if diff := cmp.Diff(before, readMigrationSettings(t, f.mon)); diff != "" {
				t.Errorf("settings not restored (-before +after):\n%s", diff)
			}
			if tc.name == "getfd" {
				// A failed getfd leaves the descriptor with the monitor
				// connection (QEMU's chardev keeps it too, until the next
				// message): it goes when the client does.
				f.mon.Close()
			}
			waitNoFDs(t, path)
		})
	}
}

// TestSaveMemoryFakeCancel cancels during the migration (from the first
// progress report of a 1 GiB stream) and during atStop.
func TestSaveMemoryFakeCancel(t *testing.T) {
	tests := []struct {
		name        string
		mode        memoryMode
		inAtStop    bool
		wantMigrate bool
	}{
		{name: "during the migration", mode: memoryStopped, wantMigrate: true},
		{name: "in atStop", mode: memoryBackground, inAtStop: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startMemFake(t, fakeqemu.Options{MemoryBytes: 1 << 30})
			before := readMigrationSettings(t, f.mon)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			path := filepath.Join(t.TempDir(), "mem")
			progress := func(done, total uint64) {
				if !tc.inAtStop {
					cancel()
				}
			}
			atStop := func(context.Context) error {
				if tc.inAtStop {
					cancel()
				}
				return nil
			}
			_, err := saveMemory(ctx, f.mon, f.feat, path, tc.mode, progress, atStop)
			if !errors.Is(err, ErrCanceled) {
				t.Fatalf("err %v, want ErrCanceled", err)
			}
			cmds := f.srv.Commands()
			if got := slices.Contains(cmds, "migrate"); got != tc.wantMigrate {
				t.Errorf("migrate sent: %v, want %v (commands %v)", got, tc.wantMigrate, cmds)
			}
			if tc.wantMigrate && !slices.Contains(cmds, "migrate_cancel") {
				t.Errorf("no migrate_cancel (commands %v)", cmds)
			}
			if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("partial file left: %v", serr)
			}
			if got := f.srv.Status(); got != "running" {
				t.Errorf("guest %s, want running", got)
			}
			if diff := cmp.Diff(before, readMigrationSettings(t, f.mon)); diff != "" {
				t.Errorf("settings not restored (-before +after):\n%s", diff)
			}
			waitNoFDs(t, path)
		})
	}
}

func TestBackgroundSnapshotSupportedFake(t *testing.T) {
	tests := []struct {
		name    string
		profile fakeqemu.Profile
		fault   *fakeqemu.Fault
		want    bool
	}{
		{name: "QEMU 7.2", profile: fakeqemu.QEMU72, want: true},
		{name: "QEMU 5.2", profile: fakeqemu.QEMU52, want: false},
		{name: "host kernel without userfaultfd write-protect", profile: fakeqemu.QEMU72, want: false,
			fault: &fakeqemu.Fault{Command: "migrate-set-capabilities", Desc: "Background-snapshot is not supported by host kernel"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startMemFake(t, fakeqemu.Options{Profile: tc.profile})
			// multifd is refused together with background-snapshot: the
			// probe must switch it off for the question, and back on.
			if tc.profile.Major >= 7 {
				if err := setCapabilities(context.Background(), f.mon, map[string]bool{"multifd": true}); err != nil {
					t.Fatal(err)
				}
			}
			before := readMigrationSettings(t, f.mon)
			if tc.fault != nil {
				f.srv.Fail(*tc.fault)
			}
			got, err := backgroundSnapshotSupported(context.Background(), f.mon, f.feat)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("supported = %v, want %v", got, tc.want)
			}
			f.srv.ClearFaults()
			if diff := cmp.Diff(before, readMigrationSettings(t, f.mon)); diff != "" {
				t.Errorf("capabilities changed (-before +after):\n%s", diff)
			}
		})
	}
}

func TestMemoryModeString(t *testing.T) {
	got := []string{memoryStopped.String(), memoryPrecopy.String(), memoryBackground.String(), memoryMode(7).String()}
	want := []string{"stopped", "pre-copy", "background-snapshot", "memoryMode(7)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
}

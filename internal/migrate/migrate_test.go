package migrate

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
	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// fake is a fake QEMU with a connected client and its probed features.
type fake struct {
	srv  *fakeqemu.Server
	mon  *qmp.Client
	feat *qmp.Features
}

func startFake(t *testing.T, opts fakeqemu.Options) *fake {
	t.Helper()
	srv, err := fakeqemu.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	f := &fake{srv: srv}
	f.mon, f.feat = f.dial(t)
	return f
}

// dial connects a new client (the fake serves one at a time).
func (f *fake) dial(t *testing.T) (*qmp.Client, *qmp.Features) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Dial(ctx, f.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	feat, err := qmp.Probe(ctx, mon)
	if err != nil {
		t.Fatal(err)
	}
	return mon, feat
}

// migrationSettings is what Save must leave as it found it.
type migrationSettings struct {
	Params map[string]json.RawMessage
	Caps   map[string]bool
}

func readMigrationSettings(t testing.TB, mon qmp.Monitor) migrationSettings {
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

// countCommand counts the commands named name the fake received.
func countCommand(srv *fakeqemu.Server, name string) int {
	n := 0
	for _, c := range srv.Commands() {
		if c == name {
			n++
		}
	}
	return n
}

// noFiles hides a monitor's FileSender capability.
type noFiles struct{ qmp.Monitor }

func TestSaveFake(t *testing.T) {
	const memBytes = 4 << 20
	tests := []struct {
		name        string
		paused      bool
		mode        Mode
		wantMode    Mode
		wantStatus  string
		postmigrate bool
	}{
		{name: "running guest, stopped mode", mode: Stopped, wantMode: Stopped, wantStatus: "running"},
		{name: "running guest, background", mode: Background, wantMode: Background, wantStatus: "running"},
		{name: "paused guest", paused: true, mode: Stopped, wantMode: Stopped, wantStatus: "postmigrate", postmigrate: true},
		{name: "paused guest, live mode asked", paused: true, mode: Background, wantMode: Stopped, wantStatus: "postmigrate", postmigrate: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, fakeqemu.Options{Paused: tc.paused, MemoryBytes: memBytes})
			ctx := context.Background()
			before := readMigrationSettings(t, f.mon)
			path := filepath.Join(t.TempDir(), "mem.vmstate")
			var prog progressLog
			var atStopStatus []string
			var counterAtStop uint64
			res, err := Save(ctx, f.mon, f.feat, path, tc.mode, "", prog.record, func(ctx context.Context) error {
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
				t.Error("Save did not make sure the descriptor is closed in QEMU")
			}
		})
	}
}

// TestSaveFakeSetsUnlimitedBandwidth checks the bandwidth and capabilities
// the migration ran with, from inside atStop of a background save (the
// migration has not started yet) and of a stopped one.
func TestSaveFakeSetsUnlimitedBandwidth(t *testing.T) {
	for _, mode := range []Mode{Stopped, Background} {
		t.Run(mode.String(), func(t *testing.T) {
			f := startFake(t, fakeqemu.Options{MemoryBytes: 1 << 20})
			// A capability that would change the stream is on before.
			if err := setCapabilities(context.Background(), f.mon, map[string]bool{"xbzrle": true}); err != nil {
				t.Fatal(err)
			}
			before := readMigrationSettings(t, f.mon)
			var during migrationSettings
			path := filepath.Join(t.TempDir(), "mem")
			_, err := Save(context.Background(), f.mon, f.feat, path, mode, "", nil, func(ctx context.Context) error {
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
				want[name] = name == capEvents || (name == capBackgroundSnapshot && mode == Background)
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

// TestSaveFakeRefusals: what Save refuses touches nothing.
func TestSaveFakeRefusals(t *testing.T) {
	tests := []struct {
		name    string
		profile fakeqemu.Profile
		mode    Mode
		mon     func(*qmp.Client) qmp.Monitor
		setup   func(t *testing.T, f *fake, path string)
		want    error
		status  string
	}{
		{name: "monitor without descriptor passing", mon: func(c *qmp.Client) qmp.Monitor { return noFiles{c} }, want: sentinel.ErrUnsupported, status: "running"},
		{name: "pre-copy without pause-before-switchover", mode: Precopy, want: sentinel.ErrUnsupported, status: "running"},
		{name: "background on QEMU 5.2", profile: fakeqemu.QEMU52, mode: Background, want: sentinel.ErrUnsupported, status: "running"},
		{name: "unknown mode", mode: Mode(9), want: nil, status: "running"},
		{name: "file exists", want: os.ErrExist, status: "running", setup: func(t *testing.T, f *fake, path string) {
			if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "guest in postmigrate", want: sentinel.ErrUnsupported, status: "postmigrate", setup: func(t *testing.T, f *fake, path string) {
			if _, err := Save(context.Background(), f.mon, f.feat, path+".first", Stopped, "", nil, nil); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "migration under way", want: sentinel.ErrBusy, status: "running", setup: func(t *testing.T, f *fake, path string) {
			startRawMigration(t, f.mon, path+".other", true, 1<<20)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			paused := tc.status == "postmigrate"
			mem := int64(1 << 20)
			if tc.name == "migration under way" {
				mem = 64 << 20
			}
			f := startFake(t, fakeqemu.Options{Profile: tc.profile, Paused: paused, MemoryBytes: mem})
			path := filepath.Join(t.TempDir(), "mem")
			if tc.setup != nil {
				tc.setup(t, f, path)
			}
			var mon qmp.Monitor = f.mon
			if tc.mon != nil {
				mon = tc.mon(f.mon)
			}
			before := readMigrationSettings(t, f.mon)
			migrates := countCommand(f.srv, "migrate")
			atStop := 0
			_, err := Save(context.Background(), mon, f.feat, path, tc.mode, "", nil, func(context.Context) error { atStop++; return nil })
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
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
			if n := countCommand(f.srv, "migrate"); n != migrates {
				t.Error("migrate was sent")
			}
		})
	}
}

// TestSaveFakeFailures injects a failure at every step: the save fails
// naming it, the file is gone, the guest runs, the settings are restored
// and no descriptor stays open.
func TestSaveFakeFailures(t *testing.T) {
	errAtStop := errors.New("disk snapshot failed")
	tests := []struct {
		name   string
		mode   Mode
		fault  *fakeqemu.Fault
		atStop error
		want   string
	}{
		{name: "set parameters", fault: &fakeqemu.Fault{Command: "migrate-set-parameters", Desc: "no"}, want: "set migration parameters"},
		{name: "set capabilities", fault: &fakeqemu.Fault{Command: "migrate-set-capabilities", Nth: 1, Desc: "no"}, want: "migrate-set-capabilities"},
		{name: "getfd", fault: &fakeqemu.Fault{Command: "getfd", Desc: "no"}, want: "pass memory file"},
		{name: "stop", fault: &fakeqemu.Fault{Command: "stop", Desc: "no"}, want: "stop guest"},
		{name: "migrate", fault: &fakeqemu.Fault{Command: "migrate", Desc: "no"}, want: "migrate:"},
		{name: "atStop, stopped mode", atStop: errAtStop, want: "at guest stop"},
		{name: "atStop, background", mode: Background, atStop: errAtStop, want: "at guest stop"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, fakeqemu.Options{MemoryBytes: 1 << 20})
			before := readMigrationSettings(t, f.mon)
			if tc.fault != nil {
				f.srv.Fail(*tc.fault)
			}
			path := filepath.Join(t.TempDir(), "mem")
			_, err := Save(context.Background(), f.mon, f.feat, path, tc.mode, "", nil, func(context.Context) error { return tc.atStop })
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

// TestSaveFakeCancel cancels during the migration (from the first progress
// report) and during atStop. A stopped save is cancelled in QEMU; a
// background snapshot is let finish and its file removed.
func TestSaveFakeCancel(t *testing.T) {
	tests := []struct {
		name       string
		mode       Mode
		memBytes   int64
		inAtStop   bool
		wantCancel bool // migrate_cancel sent
		wantStatus string
	}{
		{name: "during the migration", mode: Stopped, memBytes: 1 << 30, wantCancel: true, wantStatus: "cancelled"},
		{name: "during a background snapshot", mode: Background, memBytes: 256 << 20, wantStatus: "completed"},
		{name: "in atStop", mode: Background, memBytes: 1 << 20, inAtStop: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, fakeqemu.Options{MemoryBytes: tc.memBytes})
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
			_, err := Save(ctx, f.mon, f.feat, path, tc.mode, "", progress, atStop)
			if !errors.Is(err, sentinel.ErrCanceled) {
				t.Fatalf("err %v, want ErrCanceled", err)
			}
			t.Logf("%v", err)
			cmds := f.srv.Commands()
			if got := slices.Contains(cmds, "migrate"); got != (tc.wantStatus != "") {
				t.Errorf("migrate sent: %v, want %v (commands %v)", got, tc.wantStatus != "", cmds)
			}
			if got := slices.Contains(cmds, "migrate_cancel"); got != tc.wantCancel {
				t.Errorf("migrate_cancel sent: %v, want %v (commands %v)", got, tc.wantCancel, cmds)
			}
			if tc.wantStatus != "" {
				info, err := queryMigrate(context.Background(), f.mon)
				if err != nil || info.Status != tc.wantStatus {
					t.Errorf("migration %q %v, want %s", info.Status, err, tc.wantStatus)
				}
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

func TestBackgroundSupportedFake(t *testing.T) {
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
			f := startFake(t, fakeqemu.Options{Profile: tc.profile})
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
			got, err := BackgroundSupported(context.Background(), f.mon, f.feat)
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

func TestBackgroundSupportedFakeBusy(t *testing.T) {
	f := startFake(t, fakeqemu.Options{MemoryBytes: 64 << 20})
	startRawMigration(t, f.mon, filepath.Join(t.TempDir(), "mem"), false, 1<<20)
	if _, err := BackgroundSupported(context.Background(), f.mon, f.feat); !errors.Is(err, sentinel.ErrBusy) {
		t.Fatalf("probe during a migration: %v, want ErrBusy", err)
	}
}

func TestModeString(t *testing.T) {
	got := []string{Stopped.String(), Precopy.String(), Background.String(), Mode(7).String()}
	want := []string{"stopped", "pre-copy", "background-snapshot", "Mode(7)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
	for _, m := range []Mode{Stopped, Precopy, Background} {
		back, err := ParseMode(m.String())
		if err != nil || back != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), back, err)
		}
	}
	for _, s := range []string{"", "Mode(7)", "precopy", "mapped-ram"} {
		if _, err := ParseMode(s); err == nil {
			t.Errorf("ParseMode(%q) succeeded", s)
		}
	}
}

func TestCapabilityChanges(t *testing.T) {
	all := func(on ...string) map[string]bool {
		m := map[string]bool{"xbzrle": false, "events": false, "pause-before-switchover": false,
			"background-snapshot": false, "multifd": false, "mapped-ram": false, "return-path": false}
		for _, c := range on {
			m[c] = true
		}
		return m
	}
	tests := []struct {
		name  string
		cur   map[string]bool
		mode  Mode
		needs []string
		want  map[string]bool
	}{
		{name: "stopped, defaults", cur: all(), mode: Stopped, want: map[string]bool{"events": true}},
		{name: "pre-copy, defaults", cur: all(), mode: Precopy, want: map[string]bool{"events": true, "pause-before-switchover": true}},
		{name: "background, defaults", cur: all(), mode: Background, want: map[string]bool{"events": true, "background-snapshot": true}},
		{name: "stream-changing ones go off", cur: all("xbzrle", "multifd", "return-path", "events"), mode: Stopped,
			want: map[string]bool{"xbzrle": false, "multifd": false, "return-path": false}},
		{name: "a leftover mode capability goes off", cur: all("background-snapshot"), mode: Precopy,
			want: map[string]bool{"events": true, "background-snapshot": false, "pause-before-switchover": true}},
		{name: "already as wanted", cur: all("events", "pause-before-switchover"), mode: Precopy, want: map[string]bool{}},
		{name: "transport needs", cur: all("xbzrle"), mode: Stopped, needs: []string{"mapped-ram", "multifd"},
			want: map[string]bool{"events": true, "xbzrle": false, "mapped-ram": true, "multifd": true}},
		{name: "a need QEMU lacks is not named", cur: map[string]bool{"events": true}, mode: Stopped, needs: []string{"mapped-ram"}, want: map[string]bool{}},
		{name: "QEMU 5.2 without background-snapshot", cur: map[string]bool{"events": false, "pause-before-switchover": false}, mode: Background,
			want: map[string]bool{"events": true}},
		{name: "no capabilities at all", cur: nil, mode: Precopy, want: map[string]bool{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := capabilityChanges(tc.cur, tc.mode, tc.needs)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			// Applying then undoing gives back cur.
			applied := map[string]bool{}
			for k, v := range tc.cur {
				applied[k] = v
			}
			for k, v := range got {
				applied[k] = v
			}
			for k, v := range inverse(got, tc.cur) {
				applied[k] = v
			}
			if len(tc.cur) > 0 {
				if diff := cmp.Diff(tc.cur, applied); diff != "" {
					t.Errorf("inverse does not restore (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestLeftOn(t *testing.T) {
	got := leftOn(map[string]bool{"events": true, "background-snapshot": true, "pause-before-switchover": true, "xbzrle": true})
	want := map[string]bool{"background-snapshot": false, "pause-before-switchover": false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
}

// TestRunStateRules pins the rules of runstate.go.
func TestRunStateRules(t *testing.T) {
	statuses := []string{"", statusNone, statusSetup, statusActive, statusPreSwitchover, statusDevice,
		statusCancelling, statusCompleted, statusFailed, statusCancelled, "wait-unplug"}
	want := map[bool]map[string]cancelAction{
		false: {"": nothingToCancel, statusNone: nothingToCancel, statusSetup: cancelNow, statusActive: cancelNow,
			statusPreSwitchover: cancelNow, statusDevice: cancelNow, statusCancelling: nothingToCancel,
			statusCompleted: nothingToCancel, statusFailed: nothingToCancel, statusCancelled: nothingToCancel, "wait-unplug": cancelNow},
		true: {"": nothingToCancel, statusNone: nothingToCancel, statusSetup: letFinish, statusActive: letFinish,
			statusPreSwitchover: letFinish, statusDevice: letFinish, statusCancelling: nothingToCancel,
			statusCompleted: nothingToCancel, statusFailed: nothingToCancel, statusCancelled: nothingToCancel, "wait-unplug": letFinish},
	}
	for _, bg := range []bool{false, true} {
		for _, st := range statuses {
			if got := cancelRule(bg, st); got != want[bg][st] {
				t.Errorf("cancelRule(background=%v, %q) = %v, want %v", bg, st, got, want[bg][st])
			}
		}
	}
	contOK := map[string]bool{"": true, statusNone: true, statusCompleted: true, statusFailed: true, statusCancelled: true}
	for _, st := range statuses {
		if got := contAllowed(st, false); got != contOK[st] {
			t.Errorf("contAllowed(%q) = %v, want %v", st, got, contOK[st])
		}
	}
}

func TestGuestWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var g guestWatch
	if g.resumed() {
		t.Error("resumed before any event")
	}
	g.observe(qmp.Event{Name: "STOP", Time: t0})
	if g.resumed() {
		t.Error("resumed while stopped")
	}
	g.observe(qmp.Event{Name: "RESUME", Time: t0.Add(3 * time.Millisecond)})
	g.observe(qmp.Event{Name: "RESUME", Time: t0.Add(5 * time.Millisecond)}) // no STOP before: no time
	g.observe(qmp.Event{Name: "STOP", Time: t0.Add(10 * time.Millisecond)})
	g.observe(qmp.Event{Name: "RESUME", Time: t0.Add(12 * time.Millisecond)})
	if !g.resumed() || g.downtime != 5*time.Millisecond {
		t.Errorf("resumed %v downtime %v, want true 5ms", g.resumed(), g.downtime)
	}
}

// startRawMigration starts a migration to a new file at path as a save a
// crash interrupted would have left it: background-snapshot on or off,
// max-bandwidth bw bytes/s (so it lasts), the guest stopped for a
// non-background one.
func startRawMigration(t *testing.T, mon *qmp.Client, path string, background bool, bw uint64) {
	t.Helper()
	ctx := context.Background()
	if err := setCapabilities(ctx, mon, map[string]bool{capBackgroundSnapshot: background, capEvents: true}); err != nil {
		t.Fatal(err)
	}
	if err := mon.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": bw}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := mon.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": "crashed"}, nil, f); err != nil {
		t.Fatal(err)
	}
	if !background {
		if err := mon.Execute(ctx, "stop", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := mon.Execute(ctx, "migrate", map[string]any{"uri": "fd:crashed"}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestSettleFake settles a migration left running: a stopped save is
// cancelled, a background snapshot let finish (its file whole), and with
// nothing running Settle reports the last outcome and changes nothing but
// the capabilities.
func TestSettleFake(t *testing.T) {
	const memBytes = 8 << 20
	tests := []struct {
		name       string
		start      func(t *testing.T, f *fake, path string)
		want       Settlement
		wantCancel bool
		wantFile   int64 // size of a whole file, 0 when not checked
	}{
		{name: "nothing ran", want: Settlement{Outcome: NoMigration, State: qmp.RunStateRunning}},
		{name: "stopped save under way", start: func(t *testing.T, f *fake, path string) {
			startRawMigration(t, f.mon, path, false, 1<<20)
		}, want: Settlement{Outcome: Cancelled, WasRunning: true, State: qmp.RunStatePaused}, wantCancel: true},
		{name: "background snapshot under way", start: func(t *testing.T, f *fake, path string) {
			startRawMigration(t, f.mon, path, true, 32<<20)
		}, want: Settlement{Outcome: Completed, WasRunning: true, Background: true, State: qmp.RunStateRunning}, wantFile: memBytes},
		{name: "completed before", start: func(t *testing.T, f *fake, path string) {
			if _, err := Save(context.Background(), f.mon, f.feat, path, Background, "", nil, nil); err != nil {
				t.Fatal(err)
			}
			if err := setCapabilities(context.Background(), f.mon, map[string]bool{capBackgroundSnapshot: true}); err != nil {
				t.Fatal(err)
			}
		}, want: Settlement{Outcome: Completed, State: qmp.RunStateRunning}, wantFile: memBytes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, fakeqemu.Options{MemoryBytes: memBytes})
			path := filepath.Join(t.TempDir(), "mem")
			if tc.start != nil {
				tc.start(t, f, path)
			}
			// The crashed process's connection is gone; a new one settles.
			f.mon.Close()
			mon, _ := f.dial(t)
			got, err := Settle(context.Background(), mon)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("settlement (-want +got):\n%s", diff)
			}
			if sent := slices.Contains(f.srv.Commands(), "migrate_cancel"); sent != tc.wantCancel {
				t.Errorf("migrate_cancel sent: %v, want %v", sent, tc.wantCancel)
			}
			caps, err := queryCapabilities(context.Background(), mon)
			if err != nil {
				t.Fatal(err)
			}
			if caps[capBackgroundSnapshot] || caps[capPauseBeforeSwitchover] {
				t.Errorf("capabilities left on: %v", caps)
			}
			if tc.wantFile > 0 {
				if fi, err := os.Stat(path); err != nil || fi.Size() != tc.wantFile {
					t.Errorf("memory file %v %v, want %d bytes", fi, err, tc.wantFile)
				}
			}
		})
	}
}

// TestSettleFakeInterruptedSave loses the monitor connection while Save
// writes memory (as a toolstack that crashes would): Save fails with the
// lost connection, QEMU's migration goes on, and Settle on a new
// connection cancels it. The guest Save stopped stays paused: resuming it
// is the caller's decision.
func TestSettleFakeInterruptedSave(t *testing.T) {
	f := startFake(t, fakeqemu.Options{MemoryBytes: 4 << 30})
	f.srv.DropOn("query-migrate", 2)
	path := filepath.Join(t.TempDir(), "mem")
	_, err := Save(context.Background(), f.mon, f.feat, path, Stopped, "", nil, nil)
	if !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("save: %v, want the lost connection", err)
	}
	mon, _ := f.dial(t)
	got, err := Settle(context.Background(), mon)
	if err != nil {
		t.Fatal(err)
	}
	want := Settlement{Outcome: Cancelled, WasRunning: true, State: qmp.RunStatePaused}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("settlement (-want +got):\n%s", diff)
	}
	waitNoFDs(t, path)
	os.Remove(path)
}

func TestSettleFakeCanceled(t *testing.T) {
	f := startFake(t, fakeqemu.Options{MemoryBytes: 64 << 20})
	startRawMigration(t, f.mon, filepath.Join(t.TempDir(), "mem"), true, 1<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Settle(ctx, f.mon)
	if !errors.Is(err, sentinel.ErrCanceled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("settle under an ending ctx: %v", err)
	}
	if slices.Contains(f.srv.Commands(), "migrate_cancel") {
		t.Error("a background snapshot was cancelled")
	}
	// Leave the fake nothing to write for long.
	if err := f.mon.Execute(context.Background(), "migrate_cancel", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestLoadFakeRefusals(t *testing.T) {
	f := startFake(t, fakeqemu.Options{})
	path := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(path, []byte(fakeqemu.StreamMagic), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, mon := range map[string]qmp.Monitor{"not inmigrate": f.mon, "no descriptor passing": noFiles{f.mon}} {
		if err := Load(context.Background(), mon, path, "", nil); !errors.Is(err, sentinel.ErrUnsupported) {
			t.Errorf("%s: %v, want ErrUnsupported", name, err)
		}
	}
	if f.srv.Status() != "running" {
		t.Errorf("guest %s", f.srv.Status())
	}
}

// qemu10 imitates QEMU 10.0 for the fake: background-snapshot, and a
// version at which Save runs atStop after migrate.
var qemu10 = fakeqemu.Profile{Major: 10, Minor: 0, Micro: 2, Jobs: true, BackgroundSnapshot: true}

// TestSaveFakeAtStopOrder checks where a background snapshot's atStop
// runs: before migrate on QEMU 7.2, just after it on QEMU ≥ 9.0, the guest
// stopped both times; and that an atStop after migrate that fails, is
// cancelled, or finds that QEMU ran the guest meanwhile fails the save
// cleanly (the migration let run to its end, no file, settings restored,
// the guest running).
func TestSaveFakeAtStopOrder(t *testing.T) {
	errAtStop := errors.New("disk snapshot failed")
	tests := []struct {
		name        string
		profile     fakeqemu.Profile
		atStop      func(ctx context.Context, mon qmp.Monitor, cancel func()) error
		wantStarted bool   // the migration had started when atStop ran
		wantErr     string // "" for success
		wantIs      error
	}{
		{name: "7.2 before migrate", profile: fakeqemu.QEMU72},
		{name: "10.0 after migrate", profile: qemu10, wantStarted: true},
		{name: "10.0 atStop fails", profile: qemu10, wantStarted: true, wantErr: "at guest stop",
			atStop: func(context.Context, qmp.Monitor, func()) error { return errAtStop }, wantIs: errAtStop},
		{name: "10.0 cancelled in atStop", profile: qemu10, wantStarted: true, wantErr: "canceled",
			atStop: func(_ context.Context, _ qmp.Monitor, cancel func()) error { cancel(); return nil }, wantIs: sentinel.ErrCanceled},
		{name: "10.0 guest run during atStop", profile: qemu10, wantStarted: true, wantErr: "before its disks were snapped",
			atStop: func(ctx context.Context, mon qmp.Monitor, _ func()) error { return mon.Execute(ctx, "cont", nil, nil) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, fakeqemu.Options{Profile: tc.profile, MemoryBytes: 4 << 20})
			before := readMigrationSettings(t, f.mon)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			path := filepath.Join(t.TempDir(), "mem")
			var started, ran bool
			atStop := func(actx context.Context) error {
				info, err := queryMigrate(actx, f.mon)
				if err != nil {
					return err
				}
				started = info.Status != statusNone && info.Status != ""
				ran = f.srv.Status() == "running"
				if tc.atStop != nil {
					return tc.atStop(actx, f.mon, cancel)
				}
				return nil
			}
			res, err := Save(ctx, f.mon, f.feat, path, Background, "", nil, atStop)
			if started != tc.wantStarted || ran {
				t.Errorf("atStop ran with the migration started %v (want %v), the guest running %v", started, tc.wantStarted, ran)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if res.Mode != Background || res.Downtime <= 0 {
					t.Errorf("result %+v", res)
				}
				if fi, serr := os.Stat(path); serr != nil || fi.Size() != 4<<20 {
					t.Errorf("memory file %v %v", fi, serr)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one mentioning %q", err, tc.wantErr)
				}
				if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
					t.Errorf("err %v does not wrap %v", err, tc.wantIs)
				}
				if slices.Contains(f.srv.Commands(), "migrate_cancel") {
					t.Error("a background snapshot was cancelled")
				}
				if info, qerr := queryMigrate(context.Background(), f.mon); qerr != nil || info.Status != statusCompleted {
					t.Errorf("migration %q %v, want it let run to completed", info.Status, qerr)
				}
				if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
					t.Errorf("partial file left: %v", serr)
				}
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

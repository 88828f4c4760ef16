package enginetest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/hmp"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
)

// The monitor of the HMP-fallback targets hides the snapshot jobs from
// query-commands and refuses them as QEMU 5.2 does, without sending them;
// it logs what it sends, HMP command lines included.
func TestMonitorHidesSnapshotJobs(t *testing.T) {
	srv, err := fakeqemu.Start(fakeqemu.Options{Profile: fakeqemu.QEMU72, UUID: FakeUUID,
		Disks: []fakeqemu.Disk{{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	raw, err := qmp.Dial(ctx, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })

	for _, hide := range []bool{false, true} {
		log := &commandLog{}
		m := &monitor{Monitor: raw, log: log, hideJobs: hide}
		f, err := qmp.Probe(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range SnapshotJobCommands {
			if f.Has(c) == hide {
				t.Errorf("hide %v: query-commands lists %s: %v", hide, c, f.Has(c))
			}
		}
		if !f.Has("human-monitor-command") || !f.Has("transaction") {
			t.Errorf("hide %v: other commands lost", hide)
		}
		before := len(srv.Commands())
		err = m.Execute(ctx, "snapshot-delete", map[string]any{"job-id": "j", "tag": "x", "devices": []string{"disk0"}}, nil)
		var qe *qmp.Error
		if hide && (!errors.As(err, &qe) || qe.Class != "CommandNotFound" || len(srv.Commands()) != before) {
			t.Errorf("hidden snapshot-delete: %v, sent %v", err, srv.Commands()[before:])
		}
		if _, err := hmp.Run(ctx, m, "info status"); err != nil {
			t.Fatal(err)
		}
		want := []string{"query-version", "query-commands"}
		if !hide {
			want = append(want, "snapshot-delete")
		}
		want = append(want, "hmp:info status")
		// The probe's queries go out together, in any order.
		got := log.list()
		probe := got[:len(got)-len(want)+2]
		if !slices.Contains(probe, want[0]) || !slices.Contains(probe, want[1]) || !slices.Equal(got[len(probe):], want[2:]) {
			t.Errorf("hide %v: logged %v, want %v after the probe's queries", hide, got, want[2:])
		}
	}
}

func TestScenarioNamesUnique(t *testing.T) {
	names := Scenarios()
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) != len(names) {
		t.Fatalf("duplicate scenario names: %v", names)
	}
}

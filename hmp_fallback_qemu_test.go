package vmsnap_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// oldQEMU makes a real QEMU look like one older than 6.0: query-commands
// does not list the snapshot jobs and calling them fails as QEMU 5.2 would.
// It records the HMP command lines sent.
type oldQEMU struct {
	qmp.Monitor
	hmp []string
}

var jobCommands = []string{"snapshot-save", "snapshot-load", "snapshot-delete"}

func (m *oldQEMU) Execute(ctx context.Context, cmd string, args, result any) error {
	if slices.Contains(jobCommands, cmd) {
		return &qmp.Error{Command: cmd, Class: "CommandNotFound", Desc: "The command " + cmd + " has not been found"}
	}
	if cmd == "human-monitor-command" {
		b, _ := json.Marshal(args)
		var a struct {
			Line string `json:"command-line"`
		}
		json.Unmarshal(b, &a)
		m.hmp = append(m.hmp, a.Line)
	}
	if cmd != "query-commands" {
		return m.Monitor.Execute(ctx, cmd, args, result)
	}
	var all []map[string]any
	if err := m.Monitor.Execute(ctx, cmd, args, &all); err != nil {
		return err
	}
	kept := all[:0]
	for _, c := range all {
		if !slices.Contains(jobCommands, c["name"].(string)) {
			kept = append(kept, c)
		}
	}
	b, _ := json.Marshal(kept)
	return json.Unmarshal(b, result)
}

func TestQEMUHMPFallback(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := testCtx(t)
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mon := &oldQEMU{Monitor: vm.Mon}
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs})
	if err != nil {
		t.Fatal(err)
	}
	exec(t, vm, "stop")
	at := counter(t, vm)
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "old"}, 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range vm.Disks {
		if !slices.Contains(qemutest.ImgSnapshots(t, d.File), "old") {
			t.Fatalf("%s lacks the snapshot", d.File)
		}
	}
	exec(t, vm, "cont")
	time.Sleep(100 * time.Millisecond)
	if _, err := dom.Revert(ctx, "old", vmsnap.RevertPaused).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, vm); got != at {
		t.Fatalf("counter after HMP loadvm %d, want %d", got, at)
	}
	if _, err := dom.Delete(ctx, "old", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range vm.Disks {
		if tags := qemutest.ImgSnapshots(t, d.File); len(tags) != 0 {
			t.Fatalf("%s still holds %v", d.File, tags)
		}
	}
	want := []string{"savevm old", "loadvm old", "delvm old"}
	var got []string
	for _, l := range mon.hmp {
		if slices.Contains(want, l) {
			got = append(got, l)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("HMP commands %q, want %q in order", mon.hmp, want)
	}
	// HMP savevm snaps every disk: choosing a subset is refused up front.
	_, err = dom.Create(ctx, vmsnap.CreateSpec{Name: "part", Disks: []string{vm.Disks[0].Device}}, 0).Wait(ctx)
	if !errors.Is(err, vmsnap.ErrUnsupported) {
		t.Fatalf("subset with HMP savevm: %v", err)
	}
}

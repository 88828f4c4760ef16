package qemu

import (
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

func TestDowntime(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	var d Downtime
	for _, ev := range []qmp.Event{
		{Name: "RESUME", Time: at(0)}, // no STOP before: nothing
		{Name: "STOP", Time: at(10)},
		{Name: "JOB_STATUS_CHANGE", Time: at(15)},
		{Name: "RESUME", Time: at(40)},
		{Name: "STOP", Time: at(100)},
		{Name: "RESUME", Time: at(105)},
		{Name: "STOP", Time: at(200)},
	} {
		d.Observe(ev)
	}
	if d.Total() != 35*time.Millisecond {
		t.Errorf("Total %v, want 35ms", d.Total())
	}
	if !d.Stopped() {
		t.Error("Stopped false after a final STOP")
	}
}

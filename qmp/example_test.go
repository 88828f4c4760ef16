package qmp_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// Connect to a QEMU started with
// -qmp unix:/run/vm1.qmp,server=on,wait=off, probe what it supports and
// watch its events while running commands.
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, "unix:/run/vm1.qmp")
	if err != nil {
		log.Fatal(err) // wraps qmp.ErrMonitorInUse when another client holds the monitor
	}
	defer c.Close()

	f, err := qmp.Probe(ctx, c)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("QEMU", f.Version, "snapshot-save:", f.Has("snapshot-save"))

	events, err := c.Subscribe(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		log.Fatal(err)
	}
	for ev := range events {
		if ev.Name == "STOP" {
			break
		}
	}
	st, err := qmp.QueryStatus(ctx, c)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", st.State)
}

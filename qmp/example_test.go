package qmp_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	goqemuqmp "github.com/digitalocean/go-qemu/qmp"

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

// Share one QMP connection between go-qemu's qemu.Domain and code written
// against this package's Monitor (vmsnap.Open takes one): each gets a view
// of its own, every event reaches both, and closing one leaves the other
// working. The connection closes with the last view.
func ExampleClient_Share() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, "unix:/run/vm1.qmp")
	if err != nil {
		log.Fatal(err)
	}
	goView, ourView := c.Share(), c.Share()
	defer ourView.Close()

	d, err := qemu.NewDomain(goView, "vm1") // go-qemu's Monitor
	if err != nil {
		log.Fatal(err)
	}
	goEvents, _, err := d.Events()
	if err != nil {
		log.Fatal(err)
	}
	ourEvents, err := ourView.Subscribe(ctx) // this package's Monitor
	if err != nil {
		log.Fatal(err)
	}

	if _, err := d.Run(goqemuqmp.Command{Execute: "stop"}); err != nil {
		log.Fatal(err)
	}
	fmt.Println((<-goEvents).Event, (<-ourEvents).Name) // each sees the STOP

	d.Close() // releases goView only
	if err := ourView.Execute(ctx, "cont", nil, nil); err != nil {
		log.Fatal(err)
	}
}

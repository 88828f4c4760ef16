// Command demo walks through every vmsnap operation on a throwaway VM.
//
//	go run ./examples/demo
//
// With qemu-system-x86_64 and qemu-img installed it starts a real QEMU
// (TCG, 64 MiB, no display) whose guest is a 512-byte boot sector that
// keeps incrementing a counter in memory, on two qcow2 disks in a
// temporary directory. Without them it runs the same walk against the
// built-in fake QEMU and says so. It takes a full snapshot, a disk-only
// one, an external and a live one (or says why they are skipped), lists
// the snapshots as a tree, reverts to the full snapshot and shows the
// guest's counter going back, deletes the snapshots, prints how long each
// step took, removes everything it created and exits with status 0.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	err := run(ctx, os.Stdout)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

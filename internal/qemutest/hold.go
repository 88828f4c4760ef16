package qemutest

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// HoldImage makes another process hold the qcow2 image file open for
// writing, as a QEMU running on it does: a qemu-io that sleeps. It
// returns when that process has held the image for a while (its open
// raced nothing), and a function that ends it; cleanup ends it too.
// Nothing else may open the image while HoldImage waits.
func HoldImage(t testing.TB, file string) (release func()) {
	t.Helper()
	for try := 0; try < 5; try++ {
		cmd := exec.Command("qemu-io", "-f", "qcow2", "-c", "sleep 120000", file)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("qemu-io: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		select {
		case <-exited:
			t.Logf("qemu-io exited before holding %s: %s", file, out.String())
			continue
		case <-time.After(300 * time.Millisecond):
		}
		done := false
		release = func() {
			if !done {
				done = true
				cmd.Process.Kill()
				<-exited
			}
		}
		t.Cleanup(release)
		return release
	}
	t.Fatalf("qemu-io could not hold %s", file)
	return nil
}

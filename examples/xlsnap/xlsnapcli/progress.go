package xlsnapcli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap"
)

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// startProgress draws a progress bar on w while the operation saves
// memory, when w is a terminal. The returned function stops it and clears
// the line.
func startProgress(w io.Writer, progress func() vmsnap.Progress, done <-chan struct{}) (stop func()) {
	if !isTerminal(w) {
		return func() {}
	}
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		drawn := false
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
			case <-quit:
			case <-t.C:
				if line := progressLine(progress(), 30); line != "" {
					fmt.Fprint(w, "\r"+line)
					drawn = true
				}
				continue
			}
			if drawn {
				fmt.Fprint(w, "\r\033[K")
			}
			return
		}
	}()
	return func() {
		close(quit)
		<-finished
	}
}

// progressLine renders p as a bar width characters wide, "" when p is not
// saving memory or has no byte counts.
func progressLine(p vmsnap.Progress, width int) string {
	if p.Phase != vmsnap.PhaseSavingMemory || p.Total == 0 {
		return ""
	}
	done := min(p.Bytes, p.Total)
	fill := int(done * uint64(width) / p.Total)
	pct := done * 100 / p.Total
	return fmt.Sprintf("saving memory [%s%s] %3d%% %.1f/%.1f MiB",
		strings.Repeat("#", fill), strings.Repeat(" ", width-fill), pct,
		float64(done)/(1<<20), float64(p.Total)/(1<<20))
}

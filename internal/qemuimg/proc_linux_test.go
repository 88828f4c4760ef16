package qemuimg

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHelperRunSlow is the process the test below kills: it runs the
// qemu-img in $QEMUIMG_SLOW (a script that writes its pid, then sleeps).
func TestHelperRunSlow(t *testing.T) {
	bin := os.Getenv("QEMUIMG_SLOW")
	if bin == "" {
		t.Skip("helper process of TestQemuImgDiesWithItsCaller")
	}
	Runner{Binary: bin}.Output(context.Background(), "info", "x")
}

// A qemu-img whose caller is killed dies with it: it cannot go on writing
// files the next process settles.
func TestQemuImgDiesWithItsCaller(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	slow := filepath.Join(dir, "qemu-img")
	script := "#!/bin/sh\necho $$ > " + pidFile + "\nexec sleep 60\n"
	if err := os.WriteFile(slow, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperRunSlow$")
	helper.Env = append(os.Environ(), "QEMUIMG_SLOW="+slow)
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { helper.Process.Kill(); helper.Wait() })
	var pid int
	for deadline := time.Now().Add(20 * time.Second); pid == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the helper never started qemu-img")
		}
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	t.Cleanup(func() {
		// Only a qemu-img seen running at the end is still the test's.
		if t.Failed() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	helper.Process.Kill()
	helper.Wait()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		// Gone, or a zombie (state Z) waiting for init to reap it.
		if err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-img (pid %d) still runs 10 s after its caller was killed", pid)
		}
	}
}

package qemutest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// DirEnv names the environment variable that selects another QEMU than the
// qemu-system-x86_64 on PATH: the directory Debian packages of that QEMU
// were extracted into with dpkg-deb -x (.ci/qemu-versions prepares them).
// With DirEnv set to such a prefix, the rig runs
//
//   - prefix/bin/qemu-system-x86_64 when it exists: a wrapper that sets
//     what the binary needs in its own environment only (LD_LIBRARY_PATH
//     for libraries the host lacks, QEMU_MODULE_DIR for the prefix's
//     modules) and execs prefix/usr/bin/qemu-system-x86_64;
//   - prefix/usr/bin/qemu-system-x86_64 otherwise;
//
// with -L prefix/usr/share/qemu and -L prefix/usr/share/seabios (those that
// exist) at the front of its arguments, since Debian's QEMU looks for its
// firmware in /usr/share only. Both are in VM.Argv, so a launcher that
// starts VM.Argv again starts the same QEMU. qemu-img and qemu-io still
// come from PATH.
const DirEnv = "VMSNAP_QEMU_DIR"

// systemQEMU is the QEMU system emulator the environment selects.
type systemQEMU struct {
	binary   string   // Argv[0]: a name looked up in PATH, or a path
	dataDirs []string // -L directories, in search order
	prefix   string   // DirEnv's value made absolute, "" when unset
}

// selectedQEMU returns the QEMU the rig runs, from DirEnv. It does not
// check that the binary exists (Available does).
func selectedQEMU() (systemQEMU, error) {
	dir := os.Getenv(DirEnv)
	if dir == "" {
		return systemQEMU{binary: systemBinary}, nil
	}
	prefix, err := filepath.Abs(dir)
	if err != nil {
		return systemQEMU{}, fmt.Errorf("qemutest: %s=%s: %w", DirEnv, dir, err)
	}
	q := systemQEMU{prefix: prefix, binary: filepath.Join(prefix, "usr", "bin", systemBinary)}
	if wrapper := filepath.Join(prefix, "bin", systemBinary); isExecutable(wrapper) {
		q.binary = wrapper
	}
	for _, d := range []string{"qemu", "seabios"} {
		p := filepath.Join(prefix, "usr", "share", d)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			q.dataDirs = append(q.dataDirs, p)
		}
	}
	return q, nil
}

// available reports whether q's binary can be run.
func (q systemQEMU) available() bool {
	if q.prefix == "" {
		_, err := exec.LookPath(q.binary)
		return err == nil
	}
	return isExecutable(q.binary)
}

// argv0 returns the start of QEMU's command line: the binary and its -L
// options.
func (q systemQEMU) argv0() []string {
	argv := []string{q.binary}
	for _, d := range q.dataDirs {
		argv = append(argv, "-L", d)
	}
	return argv
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// Binary returns the QEMU system emulator the rig starts (VM.Argv[0]):
// qemu-system-x86_64, looked up in PATH, or a path under DirEnv's prefix.
func Binary() string {
	q, err := selectedQEMU()
	if err != nil {
		return os.Getenv(DirEnv)
	}
	return q.binary
}

// QEMUVersion is the version of a QEMU system emulator, as its -version
// option prints it.
type QEMUVersion struct {
	// Major, Minor and Micro are the numbers of "QEMU emulator version
	// 10.0.2": 10, 0 and 2.
	Major, Minor, Micro int
	// Package is the distribution's package version in parentheses after
	// the numbers, e.g. "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1", or "".
	Package string
}

// String returns the version as "10.0.2", followed by the package version
// in parentheses when there is one.
func (v QEMUVersion) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	if v.Package != "" {
		s += " (" + v.Package + ")"
	}
	return s
}

// AtLeast reports whether v is major.minor or newer.
func (v QEMUVersion) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// versionTimeout bounds qemu-system-x86_64 -version.
const versionTimeout = 10 * time.Second

// Version returns the version of the QEMU the rig starts (Binary), from
// its -version output, so a test can say what it ran on or expect what an
// older QEMU lacks. It skips or fails the test as Require does when QEMU
// is missing, and fails it when the binary does not run.
func Version(t testing.TB) QEMUVersion {
	t.Helper()
	Require(t)
	q, err := selectedQEMU()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, q.binary, "-version")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("qemutest: %s -version: %v\n%s", q.binary, err, out.String())
	}
	v, err := parseVersion(out.String())
	if err != nil {
		t.Fatalf("qemutest: %s -version: %v", q.binary, err)
	}
	return v
}

var versionLine = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)\.(\d+)(?:[^\n(]*\(([^)\n]*)\))?`)

// parseVersion parses the first line of qemu-system-x86_64 -version:
// "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".
func parseVersion(out string) (QEMUVersion, error) {
	m := versionLine.FindStringSubmatch(out)
	if m == nil {
		return QEMUVersion{}, fmt.Errorf("no version in %q", out)
	}
	var v QEMUVersion
	for i, p := range []*int{&v.Major, &v.Minor, &v.Micro} {
		n, err := strconv.Atoi(m[i+1])
		if err != nil {
			return QEMUVersion{}, fmt.Errorf("version in %q: %w", out, err)
		}
		*p = n
	}
	v.Package = m[4]
	return v, nil
}

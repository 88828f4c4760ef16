package qga_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vmsnap/vmsnap/qga"
	"github.com/vmsnap/vmsnap/qga/qgatest"
)

// Freeze and thaw a guest's filesystems. A fake agent stands in for the
// socket of a guest's agent channel.
func ExampleDial() {
	dir, _ := os.MkdirTemp("", "qga")
	defer os.RemoveAll(dir)
	fake, err := qgatest.Start(filepath.Join(dir, "qga.sock"), qgatest.Options{Filesystems: 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer fake.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agent, err := qga.Dial(ctx, fake.Path())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer agent.Close()
	n, err := agent.FreezeFilesystems(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	st, _ := agent.Status(ctx)
	fmt.Println("froze", n, "filesystems:", st)
	n, err = agent.ThawFilesystems(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	st, _ = agent.Status(ctx)
	fmt.Println("thawed", n, "filesystems:", st)
	// Output:
	// froze 2 filesystems: frozen
	// thawed 2 filesystems: thawed
}

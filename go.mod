module github.com/vmsnap/vmsnap

go 1.24

require (
	github.com/digitalocean/go-qemu v0.0.0-20250212194115-ee9b0668d242
	github.com/google/go-cmp v0.7.0
	github.com/hashicorp/go-multierror v1.1.1
	golang.org/x/sys v0.30.0
)

require (
	github.com/digitalocean/go-libvirt v0.0.0-20220804181439-8648fbde413e // indirect
	github.com/hashicorp/errwrap v1.0.0 // indirect
)

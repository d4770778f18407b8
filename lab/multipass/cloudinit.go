//go:build linux

package multipass

import (
	"fmt"
	"os"
	"path"
)

// baseCloudInitConfig is Multipass's base vendor-data
// (src/daemon/base_cloud_init_config.h), to which the daemon adds the
// default user's name, the time zone and an SSH key. manage_etc_hosts
// makes cloud-init rewrite /etc/hosts from its template on every boot.
const baseCloudInitConfig = `growpart:
    mode: auto
    devices: ["/"]
    ignore_growroot_disabled: false
users:
    - default
manage_etc_hosts: true
`

// Packages are what the stand-in's image adds to the lab VM's: Debian's
// cloud-init (which brings python3, as an Ubuntu image has) and sudo.
// python3-cffi-backend is named because debootstrap does not resolve the
// virtual package python3-cryptography depends on (python3-cffi-backend-api-*).
var Packages = []string{"cloud-init", "sudo", "python3-cffi-backend"}

// imageConfig makes the Debian tree behave as an Ubuntu cloud image does
// under Multipass: the NoCloud seed is the only datasource (Multipass
// attaches a cidata ISO; here the seed directory stands in for it), the
// default user is ubuntu with passwordless sudo (Ubuntu's cloud.cfg), and
// cloud-init leaves the network alone: the lab gives the VM a fixed
// address on its veth, where Multipass's network-config asks for DHCP.
const imageConfig = `datasource_list: [NoCloud, None]
network:
    config: disabled
system_info:
    default_user:
        name: ubuntu
        lock_passwd: true
        gecos: Ubuntu
        groups: [adm, sudo]
        sudo: ["ALL=(ALL) NOPASSWD:ALL"]
        shell: /bin/bash
`

// seed writes the instance's NoCloud seed and the image configuration into
// the VM's root. It runs before every boot and writes the same bytes each
// time, as Multipass attaches the same cloud-init ISO on every start.
func seed(name, root string) error {
	files := map[string]string{
		"etc/cloud/cloud.cfg.d/90_multipass_standin.cfg": imageConfig,
		"var/lib/cloud/seed/nocloud/meta-data":           fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\ncloud-name: multipass\n", name, name),
		"var/lib/cloud/seed/nocloud/user-data":           "#cloud-config\n{}\n",
		"var/lib/cloud/seed/nocloud/vendor-data": "#cloud-config\n" + baseCloudInitConfig +
			"timezone: Etc/UTC\nsystem_info:\n    default_user:\n        name: ubuntu\n",
	}
	// os.Root: a link the VM planted in its tree never leads a write out of it.
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	for rel, content := range files {
		if err := r.MkdirAll(path.Dir(rel), 0o755); err != nil {
			return err
		}
		if err := r.WriteFile(rel, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

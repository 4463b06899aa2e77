locals {
  component_names = ["lb", "appliance", "redis", "kafka", "database", "monitoring"]

  components = { for c in local.component_names : c => var.components[c] }

  # Hosts in component order; position p (0-based) gets the (11 + p)th address.
  host_list = flatten([
    for c in local.component_names : [
      for i in range(local.components[c].count) : {
        name      = format("%s-%s-%s-%02d", var.name_prefix, var.site, c, i + 1)
        component = c
        memory_mb = local.components[c].memory_mb
        also      = sort(distinct(local.components[c].also))
      }
    ]
  ])

  hosts = {
    for p, h in local.host_list : h.name => merge(h, {
      address = cidrhost(var.subnet, 10 + p)
    })
  }

  network_name = "${var.name_prefix}-${var.site}"
  gateway      = cidrhost(var.subnet, 1)
  # Load balancers are lb hosts or hosts that also carry lb.
  has_lb = local.components.lb.count > 0 || anytrue([for c in local.component_names : local.components[c].count > 0 && contains(local.components[c].also, "lb")])
  lb_vip = local.has_lb ? cidrhost(var.subnet, 5) : null

  platform = var.architecture == "aarch64" ? "linux/arm64" : "linux/amd64"
}

# The host image must already be in the engine's local store (it is never
# pulled); reading it here fails the plan early when it was not imported.
# Containers use its ID, so re-importing the image replaces the containers.
data "docker_image" "host" {
  name = var.image
}

# One bridge network per simulated data centre, with a fixed subnet so that
# host addresses (and so the inventory) are known at plan time.
resource "docker_network" "site" {
  name   = local.network_name
  driver = "bridge"

  ipam_config {
    subnet  = var.subnet
    gateway = local.gateway
  }

  labels {
    label = "tongxin.site"
    value = var.site
  }

  # Podman reports its IPAM driver ("host-local"), which was never set here:
  # without this every plan after a real apply would replace the network.
  lifecycle {
    ignore_changes = [ipam_options]
  }
}

# The test hosts: systemd containers from a locally imported image (podman
# enables its systemd mode for /sbin/init), one per inventory host. With a
# memory limit, memory_swap is the same (no swap): left unset, podman makes
# it twice the limit and reports that back, so every plan after the apply
# would change it again.
resource "docker_container" "host" {
  for_each = local.hosts

  name     = each.key
  hostname = each.key
  image    = data.docker_image.host.id
  platform = local.platform
  command  = ["/sbin/init"]

  runtime     = var.runtime
  privileged  = var.privileged
  memory      = each.value.memory_mb > 0 ? each.value.memory_mb : null
  memory_swap = each.value.memory_mb > 0 ? each.value.memory_mb : null
  must_run    = true
  restart     = "unless-stopped"
  stop_signal = "SIGRTMIN+3"

  # nftables (roles/common) loads its rules into the container's own network
  # namespace, as on a real host. Load balancers also get CAP_NET_RAW:
  # keepalived (roles/lb) sends VRRP, an IP protocol of its own, on a raw
  # socket. Nothing else is granted.
  capabilities {
    add = concat(["CAP_NET_ADMIN"], each.value.component == "lb" || contains(each.value.also, "lb") ? ["CAP_NET_RAW"] : [])
  }

  tmpfs = {
    "/run"      = "rw,mode=755"
    "/run/lock" = "rw"
    "/tmp"      = "rw"
  }

  networks_advanced {
    name         = docker_network.site.name
    ipv4_address = each.value.address
    aliases      = [each.key]
  }

  ulimit {
    name = "nofile"
    soft = var.ulimits.nofile
    hard = var.ulimits.nofile
  }

  ulimit {
    name = "nproc"
    soft = var.ulimits.nproc
    hard = var.ulimits.nproc
  }

  labels {
    label = "tongxin.site"
    value = var.site
  }

  labels {
    label = "tongxin.site_role"
    value = var.site_role
  }

  labels {
    label = "tongxin.component"
    value = each.value.component
  }

  # Components this host carries besides its own (comma-separated, maybe empty).
  labels {
    label = "tongxin.also"
    value = join(",", each.value.also)
  }

  # Podman's Docker-compatible API reads these back in its own spelling
  # (platform "linux", runtime "oci", stop signal "37", ulimits
  # "RLIMIT_NOFILE", capabilities without "CAP_" plus its default drops,
  # tmpfs options with its defaults added), so without this every plan after
  # a real apply would replace every container. They are still set at
  # creation; to change one on existing hosts, `tofu apply -replace=...`.
  lifecycle {
    ignore_changes = [platform, runtime, stop_signal, ulimit, capabilities, tmpfs]
  }
}

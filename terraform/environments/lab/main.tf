# Lab: the production host set, scaled down, as systemd containers on this
# machine (podman through its Docker-compatible API), one network per
# simulated site; then the Ansible inventory of the lab.

module "site" {
  source   = "../../modules/site-lab"
  for_each = var.sites

  site         = each.key
  site_role    = each.value.role
  name_prefix  = var.name_prefix
  image        = var.image
  architecture = var.architecture
  subnet       = each.value.subnet
  components   = each.value.components
}

module "inventory" {
  source = "../../modules/inventory"

  environment = "lab"
  connection  = var.inventory_connection
  vars        = var.inventory_vars
  output_path = coalesce(var.inventory_path, "${path.root}/../../../inventories/lab/hosts.yml")

  sites = {
    for name, site in module.site : name => {
      role         = site.site.role
      architecture = site.site.architecture
      hosts        = site.hosts
      vars         = site.lb_vip_address == null ? {} : { tongxin_lb_vip = site.lb_vip_address }
    }
  }
}

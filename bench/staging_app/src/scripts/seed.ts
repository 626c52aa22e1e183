// `medusa exec ./src/scripts/seed.ts`: a region, a sales channel, a publishable key linked to
// it, a stock location and a few products; writes the key to $STAGING_KEY_FILE.
import { writeFileSync } from "fs"
import type { ExecArgs } from "@medusajs/framework/types"
import { ContainerRegistrationKeys, Modules } from "@medusajs/framework/utils"
import {
  createApiKeysWorkflow,
  createProductsWorkflow,
  createRegionsWorkflow,
  createSalesChannelsWorkflow,
  createStockLocationsWorkflow,
  linkSalesChannelsToApiKeyWorkflow,
  linkSalesChannelsToStockLocationWorkflow,
} from "@medusajs/medusa/core-flows"

export default async function seed({ container }: ExecArgs) {
  const logger = container.resolve(ContainerRegistrationKeys.LOGGER)
  const keyFile = process.env.STAGING_KEY_FILE || "publishable-key.txt"
  const apiKeys = container.resolve(Modules.API_KEY)
  const existing = await apiKeys.listApiKeys({ type: "publishable", title: "staging storefront" })
  if (existing.length) {
    writeFileSync(keyFile, existing[0].token)
    logger.info("seed: already seeded")
    return
  }
  const { result: channels } = await createSalesChannelsWorkflow(container).run({
    input: { salesChannelsData: [{ name: "Staging storefront" }] },
  })
  const channel = channels[0]
  await createRegionsWorkflow(container).run({
    input: { regions: [{ name: "Europe", currency_code: "eur", countries: ["de", "fr", "nl"] }] },
  })
  const { result: keys } = await createApiKeysWorkflow(container).run({
    input: { api_keys: [{ title: "staging storefront", type: "publishable", created_by: "" }] },
  })
  await linkSalesChannelsToApiKeyWorkflow(container).run({
    input: { id: keys[0].id, add: [channel.id] },
  })
  const { result: locations } = await createStockLocationsWorkflow(container).run({
    input: { locations: [{ name: "Staging warehouse", address: { address_1: "1 Main St", country_code: "de", city: "Berlin" } }] },
  })
  await linkSalesChannelsToStockLocationWorkflow(container).run({
    input: { id: locations[0].id, add: [channel.id] },
  })
  const products = ["Shirt", "Sweatshirt", "Sweatpants", "Shorts", "Cap", "Socks"].map((title, i) => ({
    title: `Staging ${title}`,
    handle: `staging-${title.toLowerCase()}`,
    status: "published" as const,
    sales_channels: [{ id: channel.id }],
    options: [{ title: "Size", values: ["S", "M", "L"] }],
    variants: ["S", "M", "L"].map((size) => ({
      title: size,
      sku: `STG-${title.toUpperCase()}-${size}`,
      options: { Size: size },
      manage_inventory: false,
      prices: [{ amount: 10 + i * 5, currency_code: "eur" }],
    })),
  }))
  await createProductsWorkflow(container).run({ input: { products } })
  writeFileSync(keyFile, keys[0].token)
  logger.info(`seed: ${products.length} products, key written to ${keyFile}`)
}

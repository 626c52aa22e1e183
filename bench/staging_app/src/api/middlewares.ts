// Release marker and the v3 fault. Every image carries the same code; the image's
// environment says which release it is (STAGING_RELEASE) and whether /store/products
// is broken (STAGING_BREAK=products, set only in the v3 image).
import {
  defineMiddlewares,
  type MedusaNextFunction,
  type MedusaRequest,
  type MedusaResponse,
} from "@medusajs/framework/http"

function release(req: MedusaRequest, res: MedusaResponse, next: MedusaNextFunction) {
  res.setHeader("X-Release", process.env.STAGING_RELEASE || "dev")
  next()
}

function brokenProducts(req: MedusaRequest, res: MedusaResponse, next: MedusaNextFunction) {
  if (process.env.STAGING_BREAK === "products") {
    res.status(500).json({ type: "unexpected_state", message: "release v3: /store/products is broken" })
    return
  }
  next()
}

export default defineMiddlewares({
  routes: [
    { matcher: "/store*", middlewares: [release] },
    { matcher: "/store/products*", middlewares: [brokenProducts] },
  ],
})
